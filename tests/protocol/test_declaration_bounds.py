"""ModelDeclaration is size-bounded (issue #26 item 7): at most 64 tensors, names of at most 128
chars, at most 8 dims of at most 2**31 each; checked in __post_init__ and, on the wire, before the
decoder walks the shapes element by element."""

from __future__ import annotations

import pytest

from fedalign.protocol.errors import WireFormatError
from fedalign.protocol.messages import (MAX_DECLARED_DIM, MAX_DECLARED_DIMS, MAX_DECLARED_NAME_CHARS,
                                        MAX_DECLARED_TENSORS, ModelDeclaration, wire_registry)
from fedalign.protocol.wire import Envelope, decode, encode


def _decl(shapes):
    return ModelDeclaration("mlp2x_gelu", shapes, "vt", "llm", 64, 64)


def _unchecked(shapes):
    """A declaration built without __post_init__, as a hostile peer's encoder would send it."""
    m = object.__new__(ModelDeclaration)
    for k, v in dict(projector="mlp2x_gelu", shapes=shapes, vision_tower="vt", llm="llm", d_vision=64,
                     d_model=64).items():
        object.__setattr__(m, k, v)
    return m


BAD = [
    ({f"t{i}": (4,) for i in range(MAX_DECLARED_TENSORS + 1)}, "65 tensors, over the limit of 64"),
    ({"n" * (MAX_DECLARED_NAME_CHARS + 1): (4,)}, "has 129 chars, over the limit of 128"),
    ({"w": (1,) * (MAX_DECLARED_DIMS + 1)}, "has 9 dims, over the limit of 8"),
    ({"w": (MAX_DECLARED_DIM + 1, 1)}, "has a dim over the limit of 2\\*\\*31"),
]


def test_a_declaration_at_the_limits_is_fine():
    shapes = {f"{i:03d}" + "n" * (MAX_DECLARED_NAME_CHARS - 3): (MAX_DECLARED_DIM,) + (1,) * (MAX_DECLARED_DIMS - 1)
              for i in range(MAX_DECLARED_TENSORS)}
    assert decode(encode(Envelope(-1, -1, -1, "s", _decl(shapes))), wire_registry()).message.shapes == shapes


@pytest.mark.parametrize("shapes,msg", BAD)
def test_construction_refuses_an_oversized_declaration(shapes, msg):
    with pytest.raises(WireFormatError, match=f"^ModelDeclaration.shapes.*{msg}"):
        _decl(shapes)


@pytest.mark.parametrize("shapes,msg", BAD)
def test_the_decoder_refuses_an_oversized_declaration(shapes, msg):
    frames = encode(Envelope(-1, -1, -1, "s", _unchecked(shapes)))
    with pytest.raises(WireFormatError, match=msg):
        decode(frames, wire_registry())


def test_sixteen_thousand_shapes_are_refused_before_the_walk(monkeypatch):
    from fedalign.protocol import wire

    frames = encode(Envelope(-1, -1, -1, "s", _unchecked({f"layer{i}.weight": (64,) for i in range(16_000)})))
    walked = []
    real = wire._check
    monkeypatch.setattr(wire, "_check", lambda tp, v, where: walked.append(where) or real(tp, v, where))
    with pytest.raises(WireFormatError, match="16000 tensors, over the limit of 64"):
        decode(frames, wire_registry())
    assert walked == []  # refused by the size check, not after walking 48,000 values
