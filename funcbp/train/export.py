"""Parameters to and from ``safetensors`` files, so other tools can read them.

A parameter tree's leaves are stored under their key paths joined by dots
(``{"dense_0": {"w": ...}}`` -> ``"dense_0.w"``), the convention of PyTorch state dicts and
Hugging Face files; the file's metadata records ``{"format": "funcbp"}``. ``safetensors`` is an
optional extra (``pip install safetensors``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import tree_util

from funcbp.train.checkpoint import key_path_str

__all__ = ["load_safetensors", "save_safetensors"]


def _module():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise ImportError("exporting parameters as safetensors needs the safetensors package: "
                          "pip install safetensors") from None
    return st


def _name(path: tuple) -> str:
    return key_path_str(path).replace("/", ".")


def save_safetensors(path: str | os.PathLike, params: Any) -> Path:
    """Write the leaves of ``params`` to a ``.safetensors`` file, keyed ``layer.param``.

    Args:
      path: the file to write (replaced whole: written to a temporary name, then renamed).
      params: a pytree of arrays (None leaves, as equinox's partition leaves, are skipped).

    Returns:
      The path written.

    Raises:
      ImportError: safetensors is not installed.
      ValueError: two leaves would get the same name.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from funcbp.train import save_safetensors, load_safetensors
      >>> path = save_safetensors(tempfile.mkdtemp() + "/p.safetensors",
      ...                         {"dense_0": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}})
      >>> sorted(load_safetensors(path))
      ['dense_0.b', 'dense_0.w']
    """
    st = _module()
    tensors: dict[str, np.ndarray] = {}
    for key_path, leaf in tree_util.tree_flatten_with_path(params)[0]:
        name = _name(key_path)
        if name in tensors:
            raise ValueError(f"two parameters are both named {name!r} once their path is "
                             "joined with dots; rename one")
        tensors[name] = np.ascontiguousarray(jax.device_get(leaf))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    st.save_file(tensors, str(tmp), metadata={"format": "funcbp"})
    os.replace(tmp, path)
    return path


def load_safetensors(path: str | os.PathLike, like: Any = None) -> Any:
    """Read a ``.safetensors`` file: into the structure of ``like``, or as a flat dict.

    Args:
      path: the file.
      like: a parameter tree whose key paths name the tensors (``dense_0.w``); its shapes and
        dtypes must match. None: return ``{name: numpy array}``.

    Raises:
      ImportError: safetensors is not installed.
      ValueError: a tensor is missing, extra, or of another shape or dtype (named).
    """
    st = _module()
    tensors = st.load_file(str(path))
    if like is None:
        return tensors
    flat, treedef = tree_util.tree_flatten_with_path(like)
    names = [_name(p) for p, _ in flat]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ValueError(f"{path}: tensors do not match the parameters: missing "
                         f"{missing or 'none'}, not in the model {extra or 'none'}")
    out = []
    for name, (_, leaf) in zip(names, flat, strict=True):
        value = tensors[name]
        if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
            raise ValueError(f"{path}: tensor {name!r} is {value.dtype}{list(value.shape)}, "
                             f"the parameter is {np.asarray(leaf).dtype}{list(np.shape(leaf))}")
        out.append(jax.numpy.asarray(value))
    return tree_util.tree_unflatten(treedef, out)
