from tether.protocol import tether_pb2 as _tether_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("reply_to", "request_id", "connect_request", "connect_result", "send_request", "send_result", "user_delivery", "transitions", "presence_change", "snapshot_request", "snapshot_result", "contacts_update", "deliver_ack", "admin_request", "admin_result", "device_claim", "sync_request", "sync_reply", "group_command", "group_reply", "groups_update", "group_delivery", "group_size", "group_deleted", "user_disconnect", "group_query", "group_query_result")
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
    DEVICE_CLAIM_FIELD_NUMBER: _ClassVar[int]
    SYNC_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SYNC_REPLY_FIELD_NUMBER: _ClassVar[int]
    GROUP_COMMAND_FIELD_NUMBER: _ClassVar[int]
    GROUP_REPLY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    GROUP_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GROUP_DELETED_FIELD_NUMBER: _ClassVar[int]
    USER_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_QUERY_FIELD_NUMBER: _ClassVar[int]
    GROUP_QUERY_RESULT_FIELD_NUMBER: _ClassVar[int]
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
    device_claim: DeviceClaim
    sync_request: SyncRequest
    sync_reply: SyncReply
    group_command: GroupCommand
    group_reply: GroupReply
    groups_update: GroupsUpdate
    group_delivery: GroupDelivery
    group_size: GroupSize
    group_deleted: GroupDeleted
    user_disconnect: UserDisconnect
    group_query: GroupQuery
    group_query_result: GroupQueryResult
    def __init__(self, reply_to: _Optional[str] = ..., request_id: _Optional[int] = ..., connect_request: _Optional[_Union[ConnectRequest, _Mapping]] = ..., connect_result: _Optional[_Union[ConnectResult, _Mapping]] = ..., send_request: _Optional[_Union[SendRequest, _Mapping]] = ..., send_result: _Optional[_Union[SendResult, _Mapping]] = ..., user_delivery: _Optional[_Union[UserDelivery, _Mapping]] = ..., transitions: _Optional[_Union[TransitionBatch, _Mapping]] = ..., presence_change: _Optional[_Union[PresenceChange, _Mapping]] = ..., snapshot_request: _Optional[_Union[SnapshotRequest, _Mapping]] = ..., snapshot_result: _Optional[_Union[SnapshotResult, _Mapping]] = ..., contacts_update: _Optional[_Union[ContactsUpdate, _Mapping]] = ..., deliver_ack: _Optional[_Union[DeliverAckRequest, _Mapping]] = ..., admin_request: _Optional[_Union[AdminRequest, _Mapping]] = ..., admin_result: _Optional[_Union[AdminResult, _Mapping]] = ..., device_claim: _Optional[_Union[DeviceClaim, _Mapping]] = ..., sync_request: _Optional[_Union[SyncRequest, _Mapping]] = ..., sync_reply: _Optional[_Union[SyncReply, _Mapping]] = ..., group_command: _Optional[_Union[GroupCommand, _Mapping]] = ..., group_reply: _Optional[_Union[GroupReply, _Mapping]] = ..., groups_update: _Optional[_Union[GroupsUpdate, _Mapping]] = ..., group_delivery: _Optional[_Union[GroupDelivery, _Mapping]] = ..., group_size: _Optional[_Union[GroupSize, _Mapping]] = ..., group_deleted: _Optional[_Union[GroupDeleted, _Mapping]] = ..., user_disconnect: _Optional[_Union[UserDisconnect, _Mapping]] = ..., group_query: _Optional[_Union[GroupQuery, _Mapping]] = ..., group_query_result: _Optional[_Union[GroupQueryResult, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "platform")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    platform: _tether_pb2.Platform
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., platform: _Optional[_Union[_tether_pb2.Platform, str]] = ...) -> None: ...

class ConnectResult(_message.Message):
    __slots__ = ("error_code", "error_message", "contacts", "unread", "groups")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    contacts: _containers.RepeatedScalarFieldContainer[str]
    unread: _tether_pb2.Unread
    groups: _containers.RepeatedCompositeFieldContainer[_tether_pb2.Group]
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., contacts: _Optional[_Iterable[str]] = ..., unread: _Optional[_Union[_tether_pb2.Unread, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[_tether_pb2.Group, _Mapping]]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("sender", "sender_device", "send", "from_api")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    FROM_API_FIELD_NUMBER: _ClassVar[int]
    sender: str
    sender_device: str
    send: _tether_pb2.Send
    from_api: bool
    def __init__(self, sender: _Optional[str] = ..., sender_device: _Optional[str] = ..., send: _Optional[_Union[_tether_pb2.Send, _Mapping]] = ..., from_api: _Optional[bool] = ...) -> None: ...

class SendResult(_message.Message):
    __slots__ = ("error_code", "error_message", "ack")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    ack: _tether_pb2.SendAck
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., ack: _Optional[_Union[_tether_pb2.SendAck, _Mapping]] = ...) -> None: ...

class UserDelivery(_message.Message):
    __slots__ = ("frame", "skip_device", "created_ms")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SKIP_DEVICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    skip_device: str
    created_ms: int
    def __init__(self, frame: _Optional[bytes] = ..., skip_device: _Optional[str] = ..., created_ms: _Optional[int] = ...) -> None: ...

class Transition(_message.Message):
    __slots__ = ("kind", "user_id", "device_id", "connection_id", "status", "at_ms")
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
    def __init__(self, kind: _Optional[_Union[Transition.Kind, str]] = ..., user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., status: _Optional[_Union[_tether_pb2.SetStatus, _Mapping]] = ..., at_ms: _Optional[int] = ...) -> None: ...

class TransitionBatch(_message.Message):
    __slots__ = ("gateway_id", "transitions")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    transitions: _containers.RepeatedCompositeFieldContainer[Transition]
    def __init__(self, gateway_id: _Optional[str] = ..., transitions: _Optional[_Iterable[_Union[Transition, _Mapping]]] = ...) -> None: ...

class PresenceChange(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: _tether_pb2.UserPresence
    def __init__(self, presence: _Optional[_Union[_tether_pb2.UserPresence, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotResult(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[_tether_pb2.UserPresence]
    def __init__(self, users: _Optional[_Iterable[_Union[_tether_pb2.UserPresence, _Mapping]]] = ...) -> None: ...

class ContactsUpdate(_message.Message):
    __slots__ = ("added", "removed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class DeviceClaim(_message.Message):
    __slots__ = ("device_id", "connection_id", "gateway_id", "replaced_gateway_id", "replaced_connection_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACED_GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    REPLACED_CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    connection_id: str
    gateway_id: str
    replaced_gateway_id: str
    replaced_connection_id: str
    def __init__(self, device_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., replaced_gateway_id: _Optional[str] = ..., replaced_connection_id: _Optional[str] = ...) -> None: ...

class UserDisconnect(_message.Message):
    __slots__ = ("device_id", "code", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    code: int
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("user_id", "sync", "device_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    sync: _tether_pb2.Sync
    device_id: str
    def __init__(self, user_id: _Optional[str] = ..., sync: _Optional[_Union[_tether_pb2.Sync, _Mapping]] = ..., device_id: _Optional[str] = ...) -> None: ...

class SyncReply(_message.Message):
    __slots__ = ("error_code", "error_message", "result")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    result: _tether_pb2.SyncResult
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., result: _Optional[_Union[_tether_pb2.SyncResult, _Mapping]] = ...) -> None: ...

class DeliverAckRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "ack")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    ack: _tether_pb2.DeliverAck
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., ack: _Optional[_Union[_tether_pb2.DeliverAck, _Mapping]] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("operation", "args")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, operation: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class AdminResult(_message.Message):
    __slots__ = ("error_code", "error_message", "group_result")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GROUP_RESULT_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    group_result: _tether_pb2.GroupResult
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., group_result: _Optional[_Union[_tether_pb2.GroupResult, _Mapping]] = ...) -> None: ...

class GroupCommand(_message.Message):
    __slots__ = ("user_id", "request")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    request: _tether_pb2.GroupRequest
    def __init__(self, user_id: _Optional[str] = ..., request: _Optional[_Union[_tether_pb2.GroupRequest, _Mapping]] = ...) -> None: ...

class GroupReply(_message.Message):
    __slots__ = ("error_code", "error_message", "result")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    result: _tether_pb2.GroupResult
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., result: _Optional[_Union[_tether_pb2.GroupResult, _Mapping]] = ...) -> None: ...

class GroupsUpdate(_message.Message):
    __slots__ = ("joined", "left")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    joined: _containers.RepeatedCompositeFieldContainer[_tether_pb2.Group]
    left: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, joined: _Optional[_Iterable[_Union[_tether_pb2.Group, _Mapping]]] = ..., left: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupDelivery(_message.Message):
    __slots__ = ("deliver", "sender", "sender_device", "incarnation")
    DELIVER_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    deliver: bytes
    sender: str
    sender_device: str
    incarnation: int
    def __init__(self, deliver: _Optional[bytes] = ..., sender: _Optional[str] = ..., sender_device: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class GroupSize(_message.Message):
    __slots__ = ("member_count",)
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    member_count: int
    def __init__(self, member_count: _Optional[int] = ...) -> None: ...

class GroupQuery(_message.Message):
    __slots__ = ("group_ids", "list_members_up_to", "members_after", "members_limit")
    GROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    LIST_MEMBERS_UP_TO_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_AFTER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    group_ids: _containers.RepeatedScalarFieldContainer[str]
    list_members_up_to: int
    members_after: str
    members_limit: int
    def __init__(self, group_ids: _Optional[_Iterable[str]] = ..., list_members_up_to: _Optional[int] = ..., members_after: _Optional[str] = ..., members_limit: _Optional[int] = ...) -> None: ...

class GroupQueryResult(_message.Message):
    __slots__ = ("error_code", "error_message", "groups")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupMembers]
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupMembers, _Mapping]]] = ...) -> None: ...

class GroupMembers(_message.Message):
    __slots__ = ("group", "members", "more_members")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MORE_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    group: _tether_pb2.Group
    members: _containers.RepeatedScalarFieldContainer[str]
    more_members: bool
    def __init__(self, group: _Optional[_Union[_tether_pb2.Group, _Mapping]] = ..., members: _Optional[_Iterable[str]] = ..., more_members: _Optional[bool] = ...) -> None: ...

class GroupDeleted(_message.Message):
    __slots__ = ("incarnation",)
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    def __init__(self, incarnation: _Optional[int] = ...) -> None: ...
