from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Platform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_UNSPECIFIED: _ClassVar[Platform]
    PLATFORM_WEB: _ClassVar[Platform]
    PLATFORM_DESKTOP: _ClassVar[Platform]
    PLATFORM_IOS: _ClassVar[Platform]
    PLATFORM_ANDROID: _ClassVar[Platform]
    PLATFORM_OTHER: _ClassVar[Platform]

class Activity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_UNSPECIFIED: _ClassVar[Activity]
    ACTIVITY_ACTIVE: _ClassVar[Activity]
    ACTIVITY_IDLE: _ClassVar[Activity]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_AVAILABLE: _ClassVar[Mode]
    MODE_BUSY: _ClassVar[Mode]
    MODE_INVISIBLE: _ClassVar[Mode]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OFFLINE: _ClassVar[Status]
    STATUS_ONLINE: _ClassVar[Status]
    STATUS_AWAY: _ClassVar[Status]
    STATUS_BUSY: _ClassVar[Status]
PLATFORM_UNSPECIFIED: Platform
PLATFORM_WEB: Platform
PLATFORM_DESKTOP: Platform
PLATFORM_IOS: Platform
PLATFORM_ANDROID: Platform
PLATFORM_OTHER: Platform
ACTIVITY_UNSPECIFIED: Activity
ACTIVITY_ACTIVE: Activity
ACTIVITY_IDLE: Activity
MODE_UNSPECIFIED: Mode
MODE_AVAILABLE: Mode
MODE_BUSY: Mode
MODE_INVISIBLE: Mode
STATUS_UNSPECIFIED: Status
STATUS_OFFLINE: Status
STATUS_ONLINE: Status
STATUS_AWAY: Status
STATUS_BUSY: Status

class Frame(_message.Message):
    __slots__ = ("connect", "connected", "contacts_changed", "deliver", "deliver_ack", "disconnect", "error", "heartbeat", "heartbeat_ack", "presence_snapshot", "presence_update", "send", "send_ack", "set_status")
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    SEND_ACK_FIELD_NUMBER: _ClassVar[int]
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    DELIVER_ACK_FIELD_NUMBER: _ClassVar[int]
    SET_STATUS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    connect: Connect
    connected: Connected
    heartbeat: Heartbeat
    heartbeat_ack: HeartbeatAck
    send: Send
    send_ack: SendAck
    deliver: Deliver
    deliver_ack: DeliverAck
    set_status: SetStatus
    presence_update: PresenceUpdate
    presence_snapshot: PresenceSnapshot
    error: Error
    disconnect: Disconnect
    contacts_changed: ContactsChanged
    def __init__(self, connect: Connect | _Mapping | None = ..., connected: Connected | _Mapping | None = ..., heartbeat: Heartbeat | _Mapping | None = ..., heartbeat_ack: HeartbeatAck | _Mapping | None = ..., send: Send | _Mapping | None = ..., send_ack: SendAck | _Mapping | None = ..., deliver: Deliver | _Mapping | None = ..., deliver_ack: DeliverAck | _Mapping | None = ..., set_status: SetStatus | _Mapping | None = ..., presence_update: PresenceUpdate | _Mapping | None = ..., presence_snapshot: PresenceSnapshot | _Mapping | None = ..., error: Error | _Mapping | None = ..., disconnect: Disconnect | _Mapping | None = ..., contacts_changed: ContactsChanged | _Mapping | None = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("client_name", "device_id", "platform", "protocol_version", "status", "token")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    token: str
    device_id: str
    platform: Platform
    client_name: str
    status: SetStatus
    def __init__(self, protocol_version: int | None = ..., token: str | None = ..., device_id: str | None = ..., platform: Platform | str | None = ..., client_name: str | None = ..., status: SetStatus | _Mapping | None = ...) -> None: ...

class Connected(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "max_frame_bytes", "offline_timeout_ms", "protocol_version", "server_time_ms", "session_id", "user_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_id: str
    heartbeat_interval_ms: int
    offline_timeout_ms: int
    server_time_ms: int
    max_frame_bytes: int
    protocol_version: int
    def __init__(self, session_id: str | None = ..., user_id: str | None = ..., heartbeat_interval_ms: int | None = ..., offline_timeout_ms: int | None = ..., server_time_ms: int | None = ..., max_frame_bytes: int | None = ..., protocol_version: int | None = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: int | None = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("nonce", "server_time_ms")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    server_time_ms: int
    def __init__(self, nonce: int | None = ..., server_time_ms: int | None = ...) -> None: ...

class Send(_message.Message):
    __slots__ = ("body", "client_message_id", "recipient")
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    client_message_id: str
    recipient: str
    body: bytes
    def __init__(self, client_message_id: str | None = ..., recipient: str | None = ..., body: bytes | None = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("client_message_id", "conversation_id", "message_id", "sequence", "timestamp_ms")
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    client_message_id: str
    message_id: int
    conversation_id: str
    sequence: int
    timestamp_ms: int
    def __init__(self, client_message_id: str | None = ..., message_id: int | None = ..., conversation_id: str | None = ..., sequence: int | None = ..., timestamp_ms: int | None = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("body", "client_message_id", "conversation_id", "message_id", "recipient", "sender", "sender_device", "sequence", "timestamp_ms")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    conversation_id: str
    sequence: int
    sender: str
    sender_device: str
    recipient: str
    body: bytes
    timestamp_ms: int
    client_message_id: str
    def __init__(self, message_id: int | None = ..., conversation_id: str | None = ..., sequence: int | None = ..., sender: str | None = ..., sender_device: str | None = ..., recipient: str | None = ..., body: bytes | None = ..., timestamp_ms: int | None = ..., client_message_id: str | None = ...) -> None: ...

class Deliver(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Iterable[Message | _Mapping] | None = ...) -> None: ...

class DeliverAck(_message.Message):
    __slots__ = ("conversation_id", "sequence")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    sequence: int
    def __init__(self, conversation_id: str | None = ..., sequence: int | None = ...) -> None: ...

class SetStatus(_message.Message):
    __slots__ = ("activity", "mode")
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    activity: Activity
    mode: Mode
    def __init__(self, activity: Activity | str | None = ..., mode: Mode | str | None = ...) -> None: ...

class UserPresence(_message.Message):
    __slots__ = ("last_seen_ms", "status", "user_id", "version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    status: Status
    last_seen_ms: int
    version: int
    def __init__(self, user_id: str | None = ..., status: Status | str | None = ..., last_seen_ms: int | None = ..., version: int | None = ...) -> None: ...

class PresenceUpdate(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: UserPresence
    def __init__(self, presence: UserPresence | _Mapping | None = ...) -> None: ...

class PresenceSnapshot(_message.Message):
    __slots__ = ("contacts",)
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    contacts: _containers.RepeatedCompositeFieldContainer[UserPresence]
    def __init__(self, contacts: _Iterable[UserPresence | _Mapping] | None = ...) -> None: ...

class ContactsChanged(_message.Message):
    __slots__ = ("added", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Iterable[str] | None = ..., removed: _Iterable[str] | None = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "ref")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    ref: str
    def __init__(self, code: int | None = ..., message: str | None = ..., ref: str | None = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("code", "reason", "reconnect_delay_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    reconnect_delay_ms: int
    def __init__(self, code: int | None = ..., reason: str | None = ..., reconnect_delay_ms: int | None = ...) -> None: ...
