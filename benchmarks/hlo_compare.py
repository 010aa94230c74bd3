"""Structural comparison of two compiled XLA programs (optimised HLO text).

Two programs are *structurally identical* when their entry computations compute the same
graph: the same instructions (opcode, shape, layout, attributes) wired the same way, with
every called computation (fusions, reductions) identical in turn. Instruction names, their
order in the text, and source-location metadata are ignored.

When funcbp's compiled step is structurally identical to ``jax.grad``'s, XLA runs the same
program for both, so any measured time difference between them is noise by construction.

    python -m benchmarks.hlo_compare                 # every benchmark case, funcbp vs jax.grad
    python -m benchmarks.hlo_compare --case mlp_784_512_512_10_b128
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re

__all__ = ["digest", "instruction_counts", "opcode", "parse", "structurally_identical"]

_COMP_HEADER = re.compile(r"^(ENTRY\s+)?(%[\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*)$")
_NAME = re.compile(r"%[\w.\-]+")
# Attributes that carry no semantics: source locations, and the names a program was given.
_DROP = [re.compile(r",\s*metadata=\{[^{}]*\}"), re.compile(r",\s*origin=\{[^{}]*\}"),
         re.compile(r"stack_frame_id=\d+"), re.compile(r",\s*frontend_attributes=\{[^{}]*\}")]


def parse(text: str, *, keep_metadata: bool = False) -> tuple[dict, str]:
    """``({computation: (root, {instr: body})}, entry_name)`` from HLO module text.

    ``body`` is the text after ``name =`` (shape, opcode, operands, attributes); source
    metadata and other nameless attributes are dropped unless ``keep_metadata``.
    """
    comps: dict[str, tuple[str, dict[str, str]]] = {}
    entry = None
    current, root, body = None, None, {}
    for line in text.splitlines():
        if current is None:
            m = _COMP_HEADER.match(line)
            if m:
                current, root, body = m.group(2), None, {}
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            comps[current] = (root, body)
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            rest = m.group(3)
            for pattern in () if keep_metadata else _DROP:
                rest = pattern.sub("", rest)
            body[m.group(2)] = rest
            if m.group(1):
                root = m.group(2)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return comps, entry


def _hasher(comps: dict):
    comp_memo: dict[str, str] = {}

    def comp_hash(name: str) -> str:
        if name not in comp_memo:
            root, body = comps[name]
            memo: dict[str, str] = {}

            def instr_hash(instr: str) -> str:
                if instr not in memo:
                    def sub(m: re.Match) -> str:
                        ref = m.group(0)
                        if ref in body and ref != instr:
                            return "<" + instr_hash(ref) + ">"
                        if ref in comps:
                            return "{" + comp_hash(ref) + "}"
                        return ref
                    text = _NAME.sub(sub, body[instr])
                    memo[instr] = hashlib.sha1(text.encode()).hexdigest()[:16]
                return memo[instr]
            comp_memo[name] = instr_hash(root)
        return comp_memo[name]
    return comp_hash


def digest(hlo_text: str) -> str:
    """A hash of the entry computation's structure (names, order and metadata ignored)."""
    comps, entry = parse(hlo_text)
    return _hasher(comps)(entry)


def structurally_identical(a: str, b: str) -> bool:
    """Whether two optimised HLO texts compute the same program (see the module docstring)."""
    return digest(a) == digest(b)


def instruction_counts(hlo_text: str) -> dict[str, int]:
    """Opcode counts of the entry computation (``fusion``, ``dot``, ``copy``...)."""
    comps, entry = parse(hlo_text)
    ops = collections.Counter(opcode(body) for body in comps[entry][1].values())
    ops.pop(None, None)
    return dict(sorted(ops.items()))


def opcode(body: str) -> str | None:
    """The opcode of an instruction body from :func:`parse` (``fusion``, ``dot``, ...)."""
    m = re.match(r"\S+(?:\s*\{[^}]*\})?\s+([\w\-]+)\(", body)
    return m.group(1) if m else None


def compare_case(case) -> dict:
    """Compiles a case's ``value_and_grad`` with funcbp and with jax and compares the HLO."""
    import jax

    import funcbp
    from benchmarks import models

    init, loss = case.make()
    params = init(jax.random.key(0))
    x, y = models.batch(case.x_shape)
    texts = {name: jax.jit(vg(loss)).lower(params, x, y).compile().as_text()
             for name, vg in (("funcbp", funcbp.value_and_grad), ("jax", jax.value_and_grad))}
    return {"identical": structurally_identical(texts["funcbp"], texts["jax"]),
            "funcbp": instruction_counts(texts["funcbp"]),
            "jax": instruction_counts(texts["jax"])}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cases import CASES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.hlo_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="a case to compare (repeatable; default: every visible case)")
    args = parser.parse_args(argv)
    names = args.case or [n for n, c in CASES.items() if not c.hidden]
    for name in names:
        r = compare_case(CASES[name])
        verdict = "identical" if r["identical"] else "differs"
        print(f"{name:30s} {verdict:9s} funcbp {r['funcbp']}")
        if not r["identical"]:
            print(f"{'':30s} {'':9s} jax    {r['jax']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
