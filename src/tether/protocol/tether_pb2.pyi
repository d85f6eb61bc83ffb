from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class GroupAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_ACTION_UNSPECIFIED: _ClassVar[GroupAction]
    GROUP_ACTION_CREATE: _ClassVar[GroupAction]
    GROUP_ACTION_ADD: _ClassVar[GroupAction]
    GROUP_ACTION_REMOVE: _ClassVar[GroupAction]
    GROUP_ACTION_LIST: _ClassVar[GroupAction]
    GROUP_ACTION_DELETE: _ClassVar[GroupAction]
    GROUP_ACTION_SET_OWNER: _ClassVar[GroupAction]

class GroupEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_EVENT_UNSPECIFIED: _ClassVar[GroupEventKind]
    GROUP_EVENT_CREATED: _ClassVar[GroupEventKind]
    GROUP_EVENT_MEMBERS_ADDED: _ClassVar[GroupEventKind]
    GROUP_EVENT_MEMBERS_REMOVED: _ClassVar[GroupEventKind]
    GROUP_EVENT_OWNER_CHANGED: _ClassVar[GroupEventKind]
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
GROUP_ACTION_UNSPECIFIED: GroupAction
GROUP_ACTION_CREATE: GroupAction
GROUP_ACTION_ADD: GroupAction
GROUP_ACTION_REMOVE: GroupAction
GROUP_ACTION_LIST: GroupAction
GROUP_ACTION_DELETE: GroupAction
GROUP_ACTION_SET_OWNER: GroupAction
GROUP_EVENT_UNSPECIFIED: GroupEventKind
GROUP_EVENT_CREATED: GroupEventKind
GROUP_EVENT_MEMBERS_ADDED: GroupEventKind
GROUP_EVENT_MEMBERS_REMOVED: GroupEventKind
GROUP_EVENT_OWNER_CHANGED: GroupEventKind

class Frame(_message.Message):
    __slots__ = ("connect", "connected", "heartbeat", "heartbeat_ack", "send", "send_ack", "deliver", "deliver_ack", "set_status", "presence_update", "presence_snapshot", "error", "disconnect", "contacts_changed", "unread", "sync", "sync_result", "refresh", "refreshed", "group_request", "group_result", "groups_changed", "group_counts")
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
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    SYNC_RESULT_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    GROUP_REQUEST_FIELD_NUMBER: _ClassVar[int]
    GROUP_RESULT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    GROUP_COUNTS_FIELD_NUMBER: _ClassVar[int]
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
    unread: Unread
    sync: Sync
    sync_result: SyncResult
    refresh: Refresh
    refreshed: Refreshed
    group_request: GroupRequest
    group_result: GroupResult
    groups_changed: GroupsChanged
    group_counts: GroupCounts
    def __init__(self, connect: _Optional[_Union[Connect, _Mapping]] = ..., connected: _Optional[_Union[Connected, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., send: _Optional[_Union[Send, _Mapping]] = ..., send_ack: _Optional[_Union[SendAck, _Mapping]] = ..., deliver: _Optional[_Union[Deliver, _Mapping]] = ..., deliver_ack: _Optional[_Union[DeliverAck, _Mapping]] = ..., set_status: _Optional[_Union[SetStatus, _Mapping]] = ..., presence_update: _Optional[_Union[PresenceUpdate, _Mapping]] = ..., presence_snapshot: _Optional[_Union[PresenceSnapshot, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., disconnect: _Optional[_Union[Disconnect, _Mapping]] = ..., contacts_changed: _Optional[_Union[ContactsChanged, _Mapping]] = ..., unread: _Optional[_Union[Unread, _Mapping]] = ..., sync: _Optional[_Union[Sync, _Mapping]] = ..., sync_result: _Optional[_Union[SyncResult, _Mapping]] = ..., refresh: _Optional[_Union[Refresh, _Mapping]] = ..., refreshed: _Optional[_Union[Refreshed, _Mapping]] = ..., group_request: _Optional[_Union[GroupRequest, _Mapping]] = ..., group_result: _Optional[_Union[GroupResult, _Mapping]] = ..., groups_changed: _Optional[_Union[GroupsChanged, _Mapping]] = ..., group_counts: _Optional[_Union[GroupCounts, _Mapping]] = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("protocol_version", "token", "device_id", "platform", "client_name", "status")
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
    def __init__(self, protocol_version: _Optional[int] = ..., token: _Optional[str] = ..., device_id: _Optional[str] = ..., platform: _Optional[_Union[Platform, str]] = ..., client_name: _Optional[str] = ..., status: _Optional[_Union[SetStatus, _Mapping]] = ...) -> None: ...

class Connected(_message.Message):
    __slots__ = ("session_id", "user_id", "heartbeat_interval_ms", "offline_timeout_ms", "server_time_ms", "max_frame_bytes", "protocol_version", "max_body_bytes", "token_expires_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_id: str
    heartbeat_interval_ms: int
    offline_timeout_ms: int
    server_time_ms: int
    max_frame_bytes: int
    protocol_version: int
    max_body_bytes: int
    token_expires_ms: int
    def __init__(self, session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., offline_timeout_ms: _Optional[int] = ..., server_time_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., protocol_version: _Optional[int] = ..., max_body_bytes: _Optional[int] = ..., token_expires_ms: _Optional[int] = ...) -> None: ...

class Refresh(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class Refreshed(_message.Message):
    __slots__ = ("token_expires_ms",)
    TOKEN_EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    token_expires_ms: int
    def __init__(self, token_expires_ms: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("nonce", "server_time_ms")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    server_time_ms: int
    def __init__(self, nonce: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class Send(_message.Message):
    __slots__ = ("client_message_id", "recipient", "body")
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    client_message_id: str
    recipient: str
    body: bytes
    def __init__(self, client_message_id: _Optional[str] = ..., recipient: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("client_message_id", "message_id", "conversation_id", "sequence", "timestamp_ms")
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
    def __init__(self, client_message_id: _Optional[str] = ..., message_id: _Optional[int] = ..., conversation_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "conversation_id", "sequence", "sender", "sender_device", "recipient", "body", "timestamp_ms", "client_message_id", "group_event")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_EVENT_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    conversation_id: str
    sequence: int
    sender: str
    sender_device: str
    recipient: str
    body: bytes
    timestamp_ms: int
    client_message_id: str
    group_event: GroupEvent
    def __init__(self, message_id: _Optional[int] = ..., conversation_id: _Optional[str] = ..., sequence: _Optional[int] = ..., sender: _Optional[str] = ..., sender_device: _Optional[str] = ..., recipient: _Optional[str] = ..., body: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., client_message_id: _Optional[str] = ..., group_event: _Optional[_Union[GroupEvent, _Mapping]] = ...) -> None: ...

class Deliver(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class DeliverAck(_message.Message):
    __slots__ = ("conversation_id", "sequence")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    sequence: int
    def __init__(self, conversation_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class SetStatus(_message.Message):
    __slots__ = ("activity", "mode")
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    activity: Activity
    mode: Mode
    def __init__(self, activity: _Optional[_Union[Activity, str]] = ..., mode: _Optional[_Union[Mode, str]] = ...) -> None: ...

class UserPresence(_message.Message):
    __slots__ = ("user_id", "status", "last_seen_ms", "version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    status: Status
    last_seen_ms: int
    version: int
    def __init__(self, user_id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., last_seen_ms: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class PresenceUpdate(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: UserPresence
    def __init__(self, presence: _Optional[_Union[UserPresence, _Mapping]] = ...) -> None: ...

class PresenceSnapshot(_message.Message):
    __slots__ = ("contacts",)
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    contacts: _containers.RepeatedCompositeFieldContainer[UserPresence]
    def __init__(self, contacts: _Optional[_Iterable[_Union[UserPresence, _Mapping]]] = ...) -> None: ...

class ContactsChanged(_message.Message):
    __slots__ = ("added", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ConversationState(_message.Message):
    __slots__ = ("conversation_id", "last_sequence", "read_sequence", "incarnation")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    READ_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    last_sequence: int
    read_sequence: int
    incarnation: int
    def __init__(self, conversation_id: _Optional[str] = ..., last_sequence: _Optional[int] = ..., read_sequence: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class Unread(_message.Message):
    __slots__ = ("conversations", "truncated")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[ConversationState]
    truncated: bool
    def __init__(self, conversations: _Optional[_Iterable[_Union[ConversationState, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Sync(_message.Message):
    __slots__ = ("request_id", "conversation_id", "after_sequence", "limit", "from_read_marker")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FROM_READ_MARKER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    conversation_id: str
    after_sequence: int
    limit: int
    from_read_marker: bool
    def __init__(self, request_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., limit: _Optional[int] = ..., from_read_marker: _Optional[bool] = ...) -> None: ...

class SyncResult(_message.Message):
    __slots__ = ("request_id", "conversation_id", "messages", "has_more", "last_sequence", "incarnation")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    last_sequence: int
    incarnation: int
    def __init__(self, request_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ..., last_sequence: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "ref")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    ref: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., ref: _Optional[str] = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("code", "reason", "reconnect_delay_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    reconnect_delay_ms: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., reconnect_delay_ms: _Optional[int] = ...) -> None: ...

class GroupRequest(_message.Message):
    __slots__ = ("request_id", "action", "group_id", "user_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: GroupAction
    group_id: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[_Union[GroupAction, str]] = ..., group_id: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group_id", "conversation_id", "owner", "member_count", "incarnation")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    conversation_id: str
    owner: str
    member_count: int
    incarnation: int
    def __init__(self, group_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., owner: _Optional[str] = ..., member_count: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class GroupResult(_message.Message):
    __slots__ = ("request_id", "groups", "changed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., changed: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupsChanged(_message.Message):
    __slots__ = ("joined", "left", "deleted")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    joined: _containers.RepeatedCompositeFieldContainer[Group]
    left: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, joined: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., left: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupEvent(_message.Message):
    __slots__ = ("kind", "actor", "user_ids")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    kind: GroupEventKind
    actor: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[GroupEventKind, str]] = ..., actor: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupCount(_message.Message):
    __slots__ = ("group_id", "online", "member_count")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    online: int
    member_count: int
    def __init__(self, group_id: _Optional[str] = ..., online: _Optional[int] = ..., member_count: _Optional[int] = ...) -> None: ...

class GroupCounts(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[GroupCount]
    def __init__(self, counts: _Optional[_Iterable[_Union[GroupCount, _Mapping]]] = ...) -> None: ...
