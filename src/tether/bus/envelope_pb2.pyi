from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

from tether.protocol import tether_pb2 as _tether_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("admin_request", "admin_result", "connect_request", "connect_result", "contacts_update", "deliver_ack", "presence_change", "reply_to", "request_id", "send_request", "send_result", "snapshot_request", "snapshot_result", "transitions", "user_delivery")
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONNECT_RESULT_FIELD_NUMBER: _ClassVar[int]
    SEND_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SEND_RESULT_FIELD_NUMBER: _ClassVar[int]
    USER_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_RESULT_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    DELIVER_ACK_FIELD_NUMBER: _ClassVar[int]
    ADMIN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ADMIN_RESULT_FIELD_NUMBER: _ClassVar[int]
    reply_to: str
    request_id: int
    connect_request: ConnectRequest
    connect_result: ConnectResult
    send_request: SendRequest
    send_result: SendResult
    user_delivery: UserDelivery
    transitions: TransitionBatch
    presence_change: PresenceChange
    snapshot_request: SnapshotRequest
    snapshot_result: SnapshotResult
    contacts_update: ContactsUpdate
    deliver_ack: DeliverAckRequest
    admin_request: AdminRequest
    admin_result: AdminResult
    def __init__(self, reply_to: str | None = ..., request_id: int | None = ..., connect_request: ConnectRequest | _Mapping | None = ..., connect_result: ConnectResult | _Mapping | None = ..., send_request: SendRequest | _Mapping | None = ..., send_result: SendResult | _Mapping | None = ..., user_delivery: UserDelivery | _Mapping | None = ..., transitions: TransitionBatch | _Mapping | None = ..., presence_change: PresenceChange | _Mapping | None = ..., snapshot_request: SnapshotRequest | _Mapping | None = ..., snapshot_result: SnapshotResult | _Mapping | None = ..., contacts_update: ContactsUpdate | _Mapping | None = ..., deliver_ack: DeliverAckRequest | _Mapping | None = ..., admin_request: AdminRequest | _Mapping | None = ..., admin_result: AdminResult | _Mapping | None = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("device_id", "platform", "user_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    platform: _tether_pb2.Platform
    def __init__(self, user_id: str | None = ..., device_id: str | None = ..., platform: _tether_pb2.Platform | str | None = ...) -> None: ...

class ConnectResult(_message.Message):
    __slots__ = ("contacts", "error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    contacts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, error_code: int | None = ..., error_message: str | None = ..., contacts: _Iterable[str] | None = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("send", "sender", "sender_device")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    sender: str
    sender_device: str
    send: _tether_pb2.Send
    def __init__(self, sender: str | None = ..., sender_device: str | None = ..., send: _tether_pb2.Send | _Mapping | None = ...) -> None: ...

class SendResult(_message.Message):
    __slots__ = ("ack", "error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    ack: _tether_pb2.SendAck
    def __init__(self, error_code: int | None = ..., error_message: str | None = ..., ack: _tether_pb2.SendAck | _Mapping | None = ...) -> None: ...

class UserDelivery(_message.Message):
    __slots__ = ("frame", "skip_device")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SKIP_DEVICE_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    skip_device: str
    def __init__(self, frame: bytes | None = ..., skip_device: str | None = ...) -> None: ...

class Transition(_message.Message):
    __slots__ = ("at_ms", "connection_id", "device_id", "kind", "status", "user_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Transition.Kind]
        KIND_ONLINE: _ClassVar[Transition.Kind]
        KIND_OFFLINE: _ClassVar[Transition.Kind]
        KIND_STATUS: _ClassVar[Transition.Kind]
    KIND_UNSPECIFIED: Transition.Kind
    KIND_ONLINE: Transition.Kind
    KIND_OFFLINE: Transition.Kind
    KIND_STATUS: Transition.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    kind: Transition.Kind
    user_id: str
    device_id: str
    connection_id: str
    status: _tether_pb2.SetStatus
    at_ms: int
    def __init__(self, kind: Transition.Kind | str | None = ..., user_id: str | None = ..., device_id: str | None = ..., connection_id: str | None = ..., status: _tether_pb2.SetStatus | _Mapping | None = ..., at_ms: int | None = ...) -> None: ...

class TransitionBatch(_message.Message):
    __slots__ = ("gateway_id", "transitions")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    transitions: _containers.RepeatedCompositeFieldContainer[Transition]
    def __init__(self, gateway_id: str | None = ..., transitions: _Iterable[Transition | _Mapping] | None = ...) -> None: ...

class PresenceChange(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: _tether_pb2.UserPresence
    def __init__(self, presence: _tether_pb2.UserPresence | _Mapping | None = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Iterable[str] | None = ...) -> None: ...

class SnapshotResult(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[_tether_pb2.UserPresence]
    def __init__(self, users: _Iterable[_tether_pb2.UserPresence | _Mapping] | None = ...) -> None: ...

class ContactsUpdate(_message.Message):
    __slots__ = ("added", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Iterable[str] | None = ..., removed: _Iterable[str] | None = ...) -> None: ...

class DeliverAckRequest(_message.Message):
    __slots__ = ("ack", "device_id", "user_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    ack: _tether_pb2.DeliverAck
    def __init__(self, user_id: str | None = ..., device_id: str | None = ..., ack: _tether_pb2.DeliverAck | _Mapping | None = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("args", "operation")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, operation: str | None = ..., args: _Iterable[str] | None = ...) -> None: ...

class AdminResult(_message.Message):
    __slots__ = ("error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    def __init__(self, error_code: int | None = ..., error_message: str | None = ...) -> None: ...
