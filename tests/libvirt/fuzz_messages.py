"""Generated request messages for every vmmgr.v1 RPC, from the proto descriptors.

One walker, two sources of choices: ``RandomSource`` (seeded, fast: bench/fuzz/run.py sends
>= 100,000 messages) and ``HypothesisSource`` (shrinking, for the pytest run). Strings mix
names the daemon knows (so calls reach deep paths), hostile text (XML and shell metacharacters,
control characters, bidi and combining marks, format strings, very long strings) and random
text. Fields that make the daemon touch the outside world are drawn only from safe values:
RegisterHost.uri (test:// only: never a real hypervisor) and ImportImage.source_path.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

import vmmgr.v1

T = TypeVar("T")

HOSTILE: tuple[str, ...] = (
    "", " ", "<", ">", "&", "'", '"', "]]>", "<!--", "-->", "<![CDATA[x]]>",
    "</description><devices><emulator>/bin/sh</emulator></devices><description>",
    '"/><disk type="file"><source file="/etc/shadow"/></disk><x a="',
    "&xxe;", "<!DOCTYPE d [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
    "\x00", "a\x00b", "\x01\x02\x1b[31m", "\x7f", "\t\r\n", "line\nbreak", "\u2028\u2029",
    "\u202etxt.exe", "e\u0301\u0301\u0301", "\ufeff", "\uffff", "\U0001f600" * 3, "Ω≈ç√",
    "%s%n%x%d", "{0}{1}{__class__}", "${jndi:ldap://x}", "$(reboot)", "`id`", "; rm -rf /",
    "../../../../etc/passwd", "/etc/passwd", "C:\\Windows", "' OR 1=1 --", "\" OR \"\"=\"",
    "null", "None", "NaN", "-1", "0", "99999999999999999999", "vm1", "VM1", "-vm", "vm-",
    "a" * 63, "a" * 64, "a" * 4096, "a" * 4097, "x" * 70_000, "a=b", "=b", "a=", "team=ml",
    "label/with.dots_and-dash", "a,b", "gpu:H100", "1g.10gb", "H100-80GB", "vmm_" + "A" * 43,
    "Bearer x", "unix:/run/x.sock", "qemu+ssh://root@h/system",
)

SAFE_URIS: tuple[str, ...] = ("test:///default", "test:///nonexistent/node.xml", "bogus://x",
                              "", "not a uri", "test://relative.xml", "%00", "test:///")


@dataclass
class Vocabulary:
    """Names the daemon under test knows, so generated requests hit existing objects."""

    names: list[str] = field(default_factory=lambda: ["vm1", "base", "t1", "default", "g1"])
    ids: list[str] = field(default_factory=list)
    node_uris: list[str] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)

    def add_id(self, value: str, keep: int = 64) -> None:
        if value and value not in self.ids:
            self.ids.append(value)
            del self.ids[:-keep]


class Source(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def boolean(self) -> bool: ...
    def choice(self, items: Sequence[T]) -> T: ...
    def text(self, max_len: int) -> str: ...
    def floating(self) -> float: ...
    def raw(self, max_len: int) -> bytes: ...


class RandomSource:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def boolean(self) -> bool:
        return self.r.random() < 0.5

    def choice(self, items: Sequence[T]) -> T:
        return items[self.r.randrange(len(items))]

    def text(self, max_len: int) -> str:
        n = self.r.randint(0, max_len)
        # printable ASCII mostly, some BMP and astral code points (never lone surrogates)
        out = []
        for _ in range(n):
            k = self.r.random()
            if k < 0.8:
                out.append(chr(self.r.randint(0x20, 0x7E)))
            elif k < 0.9:
                out.append(chr(self.r.randint(0, 0x1F)))
            elif k < 0.97:
                out.append(chr(self.r.choice((self.r.randint(0xA0, 0xD7FF),
                                              self.r.randint(0xE000, 0xFFFF)))))
            else:
                out.append(chr(self.r.randint(0x10000, 0x10FFFF)))
        return "".join(out)

    def floating(self) -> float:
        return self.r.choice((0.0, -1.0, 0.5, 1.0, 2.0, 30.0, 3600.0, 1e9, 1e308, -1e308,
                              math.inf, -math.inf, math.nan, self.r.uniform(-100, 100)))

    def raw(self, max_len: int) -> bytes:
        return self.r.randbytes(self.r.randint(0, max_len))


class HypothesisSource:
    """Draws from a hypothesis ``data`` object (st.data()), so failures shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return int(self.data.draw(self.st.integers(lo, hi)))

    def boolean(self) -> bool:
        return bool(self.data.draw(self.st.booleans()))

    def choice(self, items: Sequence[T]) -> T:
        # One fixed-range draw whatever the length: the vocabulary grows with the daemon's
        # answers, and hypothesis refuses a replayed example whose draws change shape.
        return items[self.data.draw(self.st.integers(0, 255)) % len(items)]

    def text(self, max_len: int) -> str:
        alphabet = self.st.characters(exclude_categories=["Cs"])
        return str(self.data.draw(self.st.text(alphabet, max_size=max_len)))

    def floating(self) -> float:
        return float(self.data.draw(self.st.floats(allow_nan=True, allow_infinity=True)))

    def raw(self, max_len: int) -> bytes:
        return bytes(self.data.draw(self.st.binary(max_size=max_len)))


_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


class MessageGen:
    """Fills a message of any type with choices from a Source, within protobuf's own rules."""

    def __init__(self, vocab: Vocabulary, max_depth: int = 4) -> None:
        self.vocab = vocab
        self.max_depth = max_depth
        # (message full name, field name) -> generator of safe values
        self.overrides: dict[tuple[str, str], Callable[[Source], Any]] = {
            ("vmmgr.v1.RegisterHostRequest", "uri"):
                lambda s: s.choice([*SAFE_URIS, *self.vocab.node_uris]),
            ("vmmgr.v1.ImportImageRequest", "source_path"):
                lambda s: s.choice(["", "/nonexistent.qcow2", "relative.qcow2", "/",
                                    "/etc/hostname", "../../x", "a\x00b",
                                    *self.vocab.image_paths]),
        }

    def message(self, cls: type[Message], s: Source) -> Message:
        """A generated request: half the time a valid template with a few fields changed
        (reaches deep paths), otherwise every field drawn independently."""
        template = TEMPLATES.get(cls.DESCRIPTOR.full_name)
        if template is None or s.boolean():
            return self.fill(cls(), s)
        msg = cls()
        template(msg, self.vocab, s)
        for _ in range(s.integer(0, 2)):
            self.mutate(msg, s)
        return msg

    def mutate(self, msg: Message, s: Source, depth: int = 0) -> None:
        """Give one field (maybe inside a sub-message) a freshly generated value."""
        fields = list(msg.DESCRIPTOR.fields)
        if not fields:
            return
        fd: Any = s.choice(fields)
        sub = fd.message_type
        if (sub is not None and not sub.GetOptions().map_entry and not fd.is_repeated
                and depth < self.max_depth and s.boolean()):
            self.mutate(getattr(msg, fd.name), s, depth + 1)
            return
        msg.ClearField(fd.name)
        self._fill_field(msg, fd, s, depth)

    def string(self, s: Source) -> str:
        k = s.integer(0, 9)
        if k <= 3:
            return s.choice(self.vocab.names)
        if k == 4 and self.vocab.ids:
            return s.choice(self.vocab.ids)
        if k == 5:
            return str(uuid.UUID(int=s.integer(0, 2**128 - 1), version=4))
        if k <= 7:
            return s.choice(HOSTILE)
        return s.text(40)

    def integer(self, s: Source, ftype: int) -> int:
        lo, hi = _INT_RANGES[ftype]
        k = s.integer(0, 5)
        if k <= 2:
            return max(lo, min(hi, s.integer(-2, 600)))
        if k == 3:
            return s.choice([lo, hi, 0, 1])
        return s.integer(lo, hi)

    def scalar(self, s: Source, fd: FieldDescriptor, owner: str) -> Any:
        custom = self.overrides.get((owner, fd.name))
        if custom is not None:
            return custom(s)
        t = fd.type
        if t == FieldDescriptor.TYPE_STRING:
            return self.string(s)
        if t == FieldDescriptor.TYPE_BYTES:
            return s.raw(64)
        if t == FieldDescriptor.TYPE_BOOL:
            return s.boolean()
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            v = s.floating()
            if t == FieldDescriptor.TYPE_FLOAT and math.isfinite(v) and abs(v) > 3.4e38:
                v = math.copysign(3.4e38, v)
            return v
        if t == FieldDescriptor.TYPE_ENUM:
            values = [v.number for v in fd.enum_type.values]  # type: ignore[union-attr]
            return s.choice(values) if s.integer(0, 9) else s.integer(-3, 99)
        return self.integer(s, t)

    def fill(self, msg: Message, s: Source, depth: int = 0) -> Message:
        for fd in msg.DESCRIPTOR.fields:
            if s.integer(0, 9) >= 3:  # leave ~30% of the fields unset
                self._fill_field(msg, fd, s, depth)
        return msg

    def _fill_field(self, msg: Message, fd: Any, s: Source, depth: int) -> None:
        owner = msg.DESCRIPTOR.full_name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            self._map(msg, fd, s, depth)
        elif fd.is_repeated:
            for _ in range(s.integer(0, 3)):
                if fd.message_type is not None:
                    if depth < self.max_depth:
                        self.fill(getattr(msg, fd.name).add(), s, depth + 1)
                else:
                    getattr(msg, fd.name).append(self.scalar(s, fd, owner))
        elif fd.message_type is not None:
            if depth < self.max_depth:
                self.fill(getattr(msg, fd.name), s, depth + 1)
                getattr(msg, fd.name).SetInParent()
        else:
            setattr(msg, fd.name, self.scalar(s, fd, owner))

    def _map(self, msg: Message, fd: Any, s: Source, depth: int) -> None:
        key_fd = fd.message_type.fields_by_name["key"]
        val_fd = fd.message_type.fields_by_name["value"]
        target = getattr(msg, fd.name)
        for _ in range(s.integer(0, 3)):
            key = self.scalar(s, key_fd, fd.message_type.full_name)
            if val_fd.message_type is not None:
                if depth < self.max_depth:
                    self.fill(target[key], s, depth + 1)
            else:
                target[key] = self.scalar(s, val_fd, fd.message_type.full_name)


def _vm_name(v: Vocabulary, s: Source) -> str:
    return s.choice([*v.names, *(f"f{i}" for i in range(24))])


def _vm_ref(v: Vocabulary, s: Source) -> str:
    return s.choice(v.ids) if v.ids and s.boolean() else _vm_name(v, s)


def _spec(spec: Any, v: Vocabulary, s: Source) -> None:
    spec.name = _vm_name(v, s)
    spec.vcpus = s.integer(1, 2)
    spec.memory_mib = s.choice([16, 64, 128])
    spec.disks.add(image="base")
    spec.start = s.boolean()
    spec.description = s.choice(HOSTILE) if s.boolean() else "fuzz"
    spec.labels["k"] = s.choice(HOSTILE)[:256]


def _ref(msg: Any, v: Vocabulary, s: Source) -> None:
    msg.vm = _vm_ref(v, s)


TemplateFn = Callable[[Any, Vocabulary, Source], None]
Pick = Callable[[Vocabulary, Source], Any]


def _fields(**picks: Pick) -> TemplateFn:
    """A template setting each field (``a__b`` = a.b) to a picked value."""

    def apply(msg: Any, v: Vocabulary, s: Source) -> None:
        for path, pick in picks.items():
            *parents, last = path.split("__")
            target = msg
            for p in parents:
                target = getattr(target, p)
            setattr(target, last, pick(v, s))

    return apply


def _one_of(*values: Any) -> Pick:
    return lambda v, s: s.choice(values)


_PROJECT = _fields(project__name=_one_of("default", "ml", "web"),
                   project__quota__vcpus=lambda v, s: s.integer(0, 64))
TEMPLATES: dict[str, TemplateFn] = {
    "vmmgr.v1.CreateVMRequest": lambda m, v, s: _spec(m.spec, v, s),
    "vmmgr.v1.ExplainPlacementRequest": lambda m, v, s: _spec(m.spec, v, s),
    **{f"vmmgr.v1.{n}VMRequest": _ref for n in (
        "Get", "Delete", "Start", "Stop", "Reboot", "Suspend", "Resume", "Migrate")},
    "vmmgr.v1.GetMigratabilityRequest": _ref,
    "vmmgr.v1.GetOperationRequest": _fields(id=_vm_ref),
    "vmmgr.v1.CancelOperationRequest": _fields(id=_vm_ref),
    "vmmgr.v1.RegisterHostRequest": _fields(
        name=_one_of("t1", "t2", "t3"), uri=lambda v, s: s.choice([*v.node_uris, *SAFE_URIS])),
    "vmmgr.v1.ImportImageRequest": _fields(
        name=_one_of("base", "img2"),
        source_path=lambda v, s: s.choice(v.image_paths or ["/nonexistent"])),
    "vmmgr.v1.CreatePlacementGroupRequest": _fields(
        group__name=_one_of("g1", "g2"), group__policy=_one_of("affinity", "anti-affinity", "x")),
    "vmmgr.v1.CreateTokenRequest": _fields(name=_one_of("t", "ci", "x" * 65),
                                           role=lambda v, s: s.integer(0, 4)),
    "vmmgr.v1.CreateProjectRequest": _PROJECT,
    "vmmgr.v1.UpdateProjectRequest": _PROJECT,
}


@dataclass(frozen=True)
class Rpc:
    path: str  # "/vmmgr.v1.VMService/CreateVM"
    request: type[Message]
    response: type[Message]
    server_streaming: bool
    descriptor: MethodDescriptor


def all_rpcs() -> list[Rpc]:
    """Every method of every vmmgr.v1 service, with its message classes."""
    out = []
    for info in sorted(pkgutil.iter_modules(vmmgr.v1.__path__), key=lambda i: i.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"vmmgr.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Rpc(f"/{service.full_name}/{m.name}",
                               message_factory.GetMessageClass(m.input_type),
                               message_factory.GetMessageClass(m.output_type),
                               m.server_streaming, m))
    return out


# ---------------------------------------------------------------------------- the driver

FAILURE_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS")
HOSTILE_METADATA = tuple(h for h in HOSTILE if h.isascii() and h.isprintable() and len(h) < 200)


@dataclass
class Failure:
    method: str
    code: str
    details: str
    request: str


@dataclass
class Tally:
    sent: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def add(self, code: str) -> None:
        self.sent += 1
        self.by_code[code] = self.by_code.get(code, 0) + 1

    def merge(self, other: Tally) -> None:
        self.sent += other.sent
        for k, v in other.by_code.items():
            self.by_code[k] = self.by_code.get(k, 0) + v
        self.failures += other.failures


class Fuzzer:
    """Sends generated messages over a channel and tallies status codes.

    A failure is INTERNAL / UNKNOWN / DATA_LOSS, or UNAVAILABLE without vmmgr's error metadata
    (the transport, i.e. the daemon, went away)."""

    def __init__(self, channel: Any, vocab: Vocabulary, *, unary_timeout: float = 10.0,
                 stream_timeout: float = 0.2, raw_share: int = 5, metadata_share: int = 5,
                 rpcs: Sequence[Rpc] | None = None) -> None:
        self.vocab = vocab
        self.gen = MessageGen(vocab)
        self.rpcs = list(rpcs if rpcs is not None else all_rpcs())
        self.unary_timeout = unary_timeout
        self.stream_timeout = stream_timeout
        self.raw_share = raw_share
        self.metadata_share = metadata_share
        self.calls: dict[str, Any] = {}
        self.raw_calls: dict[str, Any] = {}
        for rpc in self.rpcs:
            make = channel.unary_stream if rpc.server_streaming else channel.unary_unary
            self.calls[rpc.path] = make(rpc.path, request_serializer=rpc.request.SerializeToString,
                                        response_deserializer=rpc.response.FromString)
            self.raw_calls[rpc.path] = make(rpc.path, request_serializer=None,
                                            response_deserializer=rpc.response.FromString)

    def metadata(self, s: Source) -> tuple[tuple[str, str], ...]:
        if s.integer(0, 99) >= self.metadata_share:
            return ()
        md = []
        if s.boolean():
            md.append(("authorization", s.choice(HOSTILE_METADATA)))
        if s.boolean():
            md.append(("x-request-id", s.choice(HOSTILE_METADATA) or "x"))
        return tuple(md)

    def one(self, s: Source, tally: Tally, rpc: Rpc | None = None) -> str:
        rpc = rpc or s.choice(self.rpcs)
        raw = s.integer(0, 99) < self.raw_share
        payload: Any = s.raw(200) if raw else self.gen.message(rpc.request, s)
        md = self.metadata(s)
        call = (self.raw_calls if raw else self.calls)[rpc.path]
        code, details = "OK", ""
        trailing: Any = ()
        try:
            if rpc.server_streaming:
                it = call(payload, timeout=self.stream_timeout, metadata=md)
                for n, resp in enumerate(it):
                    self.learn(resp)
                    if n >= 2:
                        it.cancel()
                        break
            else:
                self.learn(call(payload, timeout=self.unary_timeout, metadata=md))
        except Exception as exc:  # grpc.RpcError, or a client-side serialisation error
            code_fn = getattr(exc, "code", None)
            if code_fn is None:
                raise
            code = code_fn().name
            details = exc.details() or ""  # type: ignore[attr-defined]
            trailing = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
        tally.add(code)
        from_vmmgr = any(k == "vmmgr-error-code" for k, _ in trailing)
        if code in FAILURE_CODES or (code == "UNAVAILABLE" and not from_vmmgr):
            text = repr(payload)[:300] if raw else str(payload)[:2000]
            tally.failures.append(Failure(rpc.path, code, details, text))
        return code

    def learn(self, resp: Any) -> None:
        """Remember ids from responses so later requests name existing objects."""
        for name in ("operation", "vm", "token"):
            if resp.DESCRIPTOR.fields_by_name.get(name) is not None and resp.HasField(name):
                sub = getattr(resp, name)
                self.vocab.add_id(sub.id)
                if name == "operation":
                    self.vocab.add_id(sub.result.get("vm_id", ""))
        if "vms" in resp.DESCRIPTOR.fields_by_name:
            for v in resp.vms[:3]:
                self.vocab.add_id(v.id)
