"""Stateful Hypothesis test of ServerProtocol: frames, garbage, split reads and state moves.

A model predicts which frames the protocol accepts and which violation it records, with
Protobuf's own parser deciding whether a payload is a valid frame. Raw bytes on a TCP stream can
leave part of a frame buffered, after which the model stops predicting and only the invariants
are checked.
"""

from __future__ import annotations

import itertools

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tether.protocol import pb
from tether.protocol.codes import Code
from tether.protocol.connection import ServerProtocol
from tether.protocol.errors import ProtocolError
from tether.protocol.framing import prefix_frame
from tether.protocol.states import ALLOWED_FROM_CLIENT, TRANSITIONS, ConnectionState

FRAME_KINDS = [field.name for field in pb.Frame.DESCRIPTOR.oneofs_by_name["kind"].fields]

# ServerProtocol keeps `state` in a slot. RecordingProtocol reads and writes it through this.
_STATE_SLOT = ServerProtocol.__dict__["state"]


class RecordingProtocol(ServerProtocol):
    """ServerProtocol that records every assignment to `state`, whatever code makes it."""

    __slots__ = ("moves",)

    def __init__(self, *, max_frame_bytes: int, stream: bool) -> None:
        self.moves: list[tuple[ConnectionState | None, ConnectionState]] = []
        super().__init__(max_frame_bytes=max_frame_bytes, stream=stream)

    @property
    def state(self) -> ConnectionState:
        return _STATE_SLOT.__get__(self, type(self))

    @state.setter
    def state(self, new: ConnectionState) -> None:
        try:
            old: ConnectionState | None = _STATE_SLOT.__get__(self, type(self))
        except AttributeError:  # the assignment in __init__
            old = None
        self.moves.append((old, new))
        _STATE_SLOT.__set__(self, new)


# Frames of every kind, with their scalar fields filled in


def scalar_values(field: FieldDescriptor) -> st.SearchStrategy[object]:
    """Return a strategy for the values of one non-repeated scalar field."""
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=40)
        return st.text(max_size=20)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        bits = 32 if field.cpp_type == FieldDescriptor.CPPTYPE_UINT32 else 64
        return st.integers(min_value=0, max_value=2**bits - 1)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
        bits = 32 if field.cpp_type == FieldDescriptor.CPPTYPE_INT32 else 64
        return st.integers(min_value=-(2 ** (bits - 1)), max_value=2 ** (bits - 1) - 1)
    return st.nothing()  # floating-point fields (none in the schema yet) keep their default


@st.composite
def frames_of_kind(draw: st.DrawFn, kind: str) -> pb.Frame:
    frame = pb.Frame()
    message = getattr(frame, kind)
    message.SetInParent()  # selects the kind even when every field keeps its default
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated or field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            continue
        value = draw(st.none() | scalar_values(field))
        if value is not None:
            setattr(message, field.name, value)
    return frame


any_frames = st.sampled_from(FRAME_KINDS).flatmap(frames_of_kind)


def expected_state_after_violation(state: ConnectionState) -> ConnectionState:
    # CLOSED -> CLOSING is not a legal move, so a closed connection stays closed.
    return ConnectionState.CLOSED if state is ConnectionState.CLOSED else ConnectionState.CLOSING


class ServerProtocolMachine(RuleBasedStateMachine):
    """Drives one ServerProtocol and checks it against a model of its state and violation."""

    protocol: RecordingProtocol
    model_state: ConnectionState
    model_code: Code | None
    synced: bool  # False once raw bytes may have left a partial frame in the stream buffer

    @initialize(stream=st.booleans(), max_frame_bytes=st.sampled_from([0, 16, 64, 1024]))
    def start(self, stream: bool, max_frame_bytes: int) -> None:
        self.protocol = RecordingProtocol(max_frame_bytes=max_frame_bytes, stream=stream)
        self.model_state = ConnectionState.AWAITING_CONNECT
        self.model_code = None
        self.synced = True
        self.first_violation: ProtocolError | None = None

    # Helpers

    def predict(self, payloads: list[bytes]) -> list[pb.Frame]:
        """Apply the protocol's rules to payloads in the model and return the frames to accept."""
        accepted: list[pb.Frame] = []
        for payload in payloads:
            if self.model_code is not None:
                break
            if len(payload) > self.protocol.max_frame_bytes:
                self.model_code = Code.FRAME_TOO_LARGE
                break
            try:
                frame = pb.Frame.FromString(payload)
            except DecodeError:
                self.model_code = Code.PROTOCOL_ERROR
                break
            kind = frame.WhichOneof("kind")
            if kind not in ALLOWED_FROM_CLIENT[self.model_state]:
                self.model_code = Code.PROTOCOL_ERROR
                break
            if kind == "connect":
                self.model_state = ConnectionState.AUTHENTICATING
            accepted.append(frame)
        if self.model_code is not None:
            self.model_state = expected_state_after_violation(self.model_state)
        return accepted

    def deliver(self, inputs: list[bytes]) -> list[pb.Frame]:
        """Pass each input to the protocol as one read or message and return the frames accepted.

        Checks on the way that each accepted frame was allowed in the state it arrived in and
        that nothing is accepted once a violation is recorded.
        """
        accepted: list[pb.Frame] = []
        for data in inputs:
            state = self.protocol.state
            violated_before = self.protocol.violation is not None
            if self.protocol.stream:
                frames = self.protocol.receive_data(data)
            else:
                frames = self.protocol.receive_message(data)
                assert len(frames) <= 1

            if violated_before:
                assert frames == []
            elif self.protocol.violation is not None:
                assert self.protocol.state is expected_state_after_violation(state)
            for frame in frames:
                kind = frame.WhichOneof("kind")
                assert kind in ALLOWED_FROM_CLIENT[state], f"{kind} accepted in {state.value}"
                if kind == "connect":
                    state = ConnectionState.AUTHENTICATING
            accepted.extend(frames)
        return accepted

    def check_prediction(self, accepted: list[pb.Frame], predicted: list[pb.Frame]) -> None:
        if not self.synced:
            return
        assert accepted == predicted
        violation = self.protocol.violation
        assert (violation.code if violation is not None else None) == self.model_code
        assert self.protocol.state is self.model_state

    def send_payloads(self, payloads: list[bytes], cuts: list[int] | None = None) -> None:
        """Send whole frames: one message each on WebSocket, chunks cut anywhere on TCP."""
        if self.protocol.stream:
            data = b"".join(prefix_frame(payload) for payload in payloads)
            bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts or []), len(data)]
            inputs = [data[start:end] for start, end in itertools.pairwise(bounds)]
        else:
            inputs = payloads
        predicted = self.predict(payloads)
        self.check_prediction(self.deliver(inputs), predicted)

    # Rules

    @rule(frame=any_frames)
    def send_frame(self, frame: pb.Frame) -> None:
        self.send_payloads([frame.SerializeToString()])

    @precondition(lambda self: bool(ALLOWED_FROM_CLIENT[self.protocol.state]))
    @rule(data=st.data())
    def send_allowed_frame(self, data: st.DataObject) -> None:
        # Frames of random kinds end most runs at the first one; this rule gets runs further.
        kinds = sorted(ALLOWED_FROM_CLIENT[self.protocol.state])
        frame = data.draw(st.sampled_from(kinds).flatmap(frames_of_kind))
        self.send_payloads([frame.SerializeToString()])

    @rule(frames=st.lists(any_frames, min_size=1, max_size=4), cuts=st.lists(st.integers(0, 2**16)))
    def send_frames_split(self, frames: list[pb.Frame], cuts: list[int]) -> None:
        self.send_payloads([frame.SerializeToString() for frame in frames], cuts)

    @rule(payload=st.binary(max_size=40))
    def send_garbage_frame(self, payload: bytes) -> None:
        # A well-framed payload of random bytes: usually not a valid Frame, sometimes one.
        self.send_payloads([payload])

    @rule(data=st.binary(min_size=1, max_size=40))
    def send_raw_bytes(self, data: bytes) -> None:
        if not self.protocol.stream:
            self.send_payloads([data])
            return
        self.deliver([data])
        if self.protocol.violation is None:
            self.synced = False  # part of a frame may now wait in the buffer
        else:
            self.model_code = self.protocol.violation.code
            self.model_state = self.protocol.state

    @rule(data=st.data())
    def move_legally(self, data: st.DataObject) -> None:
        targets = sorted(TRANSITIONS[self.protocol.state], key=lambda state: state.value)
        if not targets:
            return
        target = data.draw(st.sampled_from(targets))

        self.protocol.move_to(target)

        assert self.protocol.state is target
        self.model_state = target

    @rule(new=st.sampled_from(list(ConnectionState)))
    def move_illegally(self, new: ConnectionState) -> None:
        current = self.protocol.state
        if new is current or new in TRANSITIONS[current]:
            return

        with pytest.raises(RuntimeError, match="illegal connection state change"):
            self.protocol.move_to(new)

        assert self.protocol.state is current

    @precondition(lambda self: self.protocol.violation is not None)
    @rule()
    def send_after_violation(self) -> None:
        heartbeat = pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString()
        state = self.protocol.state

        assert self.deliver([prefix_frame(heartbeat) if self.protocol.stream else heartbeat]) == []

        assert self.protocol.state is state

    # Invariants

    @invariant()
    def state_moves_along_table(self) -> None:
        first, *later = self.protocol.moves
        assert first == (None, ConnectionState.AWAITING_CONNECT)
        for old, new in later:
            assert old is not None
            assert new is old or new in TRANSITIONS[old], f"moved {old.value} -> {new.value}"

    @invariant()
    def violation_means_closing(self) -> None:
        violation = self.protocol.violation
        if violation is None:
            return
        assert isinstance(violation, ProtocolError)
        assert violation.code in (Code.PROTOCOL_ERROR, Code.FRAME_TOO_LARGE)
        assert self.protocol.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    @invariant()
    def first_violation_kept(self) -> None:
        if self.first_violation is None:
            self.first_violation = self.protocol.violation
        assert self.protocol.violation is self.first_violation


ServerProtocolMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None
)
test_server_protocol_machine = ServerProtocolMachine.TestCase
