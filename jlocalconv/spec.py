"""One static description of a local convolution: :class:`LocalConvSpec`.

Every entry point (``local_conv`` and its 1-D/2-D/3-D forms, the transposes,
``sharding.sharded_local_conv`` and the NNX/Linen/Equinox layers) builds one
:class:`LocalConvSpec` from its arguments and calls through it, so the static arguments are
normalised and validated here, once, and an option is declared in one place:

* :class:`ConvOptions` types the keyword options every entry point takes as
  ``**options`` (``padding``, ``dilation``, ``precision``, ``preferred_element_type``,
  ``implementation``);
* :class:`LocalConvSpec` holds them, normalised, with the window, strides and data format;
* :data:`OPTIONS_DOC` documents them, spliced into every entry point's docstring, and
  :func:`with_options` shows them in every entry point's signature.

Adding an option means adding it to these three and to the code that uses it (and a
Linen field: Linen modules declare their attributes).

May import: ``_errors``, ``_validate``, ``_checks``, ``geometry``, ``implementations``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import jax
from jax import lax

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv._validate import DataFormat, IntOrTuple, normalize_data_format, normalize_tuple
from jlocalconv.geometry import Geometry, PaddingLike, make_geometry, normalize_padding
from jlocalconv.implementations import accepted as implementation_names

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # Python 3.10: chex, a core dependency, brings typing_extensions
    from typing_extensions import Unpack


class ConvOptions(TypedDict, total=False):
    """The keyword options of a local convolution (``**options`` of every entry point)."""

    padding: PaddingLike
    dilation: IntOrTuple
    precision: lax.PrecisionLike
    preferred_element_type: jax.typing.DTypeLike | None
    implementation: str


# Indented for an ``Args:``/``Attributes:`` section; ``{options}`` in a docstring becomes this.
OPTIONS_DOC = """\
      padding: ``"valid"`` (default), ``"same"`` (``ceil(n / stride)`` outputs, the odd
        pad on the high side), ``"causal"`` (1-D only), an int, N ints (symmetric) or
        N ``(low, high)`` pairs. Strings are case-insensitive; padding is zeros.
      dilation: kernel (atrous) dilation, an int or a tuple of N ints.
      precision: forwarded to the contraction (``lax.dot_general``).
      preferred_element_type: accumulation/result dtype of the contraction, e.g.
        ``jnp.float32`` for bf16 operands.
      implementation: ``"auto"``, ``"autotune"`` or a name from
        ``jlocalconv.implementations``. ``"auto"`` picks by static shapes, dtype and
        backend; on CPU it computes bf16/f16 operands in float32 and rounds the result
        once. ``"autotune"`` does the same with a measured choice: it times every
        implementation on the call's problem once per process (or once per machine with
        a cache file, see ``jlocalconv.autotune``)."""

# Options that shape the geometry; the others pass through to the contraction.
GEOMETRIC_OPTIONS = ("padding", "dilation")


@dataclasses.dataclass(frozen=True)
class LocalConvSpec:
    """The static arguments of a local convolution, normalised and validated once.

    Frozen and hashable: usable as a static argument of ``jax.jit`` and as a field of a
    layer. Build one with :meth:`create` (which names the calling function in errors); the
    constructor normalises and validates too.

    Attributes:
      kernel_size: the window, one int per spatial dim.
      strides: the window strides, one int per spatial dim.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      padding: a lower-case mode (``"valid"``, ``"same"``, ``"causal"``) or explicit
        ``(low, high)`` pairs; modes are resolved against the input's shape by
        :meth:`geometry`.
      dilation: the kernel dilation, one int per spatial dim.
      precision: forwarded to the contraction (a list becomes a tuple: hashable).
      preferred_element_type: None or a real floating dtype.
      implementation: ``"auto"``, ``"autotune"`` or a name from
        :mod:`jlocalconv.implementations`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jlocalconv.spec import LocalConvSpec
      >>> spec = LocalConvSpec.create(2, 3, 1, padding="SAME")
      >>> spec.kernel_size, spec.padding
      ((3, 3), 'same')
      >>> spec.geometry((8, 5, 5, 3)).output_shape
      (5, 5)
    """

    # Typed as normalised; the defaults (and what create passes) are the user forms that
    # __post_init__ normalises, hence the two assignment ignores.
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...] = 1  # type: ignore[assignment]
    data_format: DataFormat = "channels_last"
    padding: str | tuple[tuple[int, int], ...] = "valid"
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]
    precision: lax.PrecisionLike = None
    preferred_element_type: jax.typing.DTypeLike | None = None
    implementation: str = "auto"
    ndim: dataclasses.InitVar[int | None] = None
    fn: dataclasses.InitVar[str] = "LocalConvSpec"

    def __post_init__(self, ndim: int | None, fn: str) -> None:
        n = _spatial_rank(self.kernel_size, ndim, fn)
        fmt = normalize_data_format(self.data_format, fn)
        ks = normalize_tuple(self.kernel_size, n, fn, "kernel_size")
        st = normalize_tuple(self.strides, n, fn, "strides")
        dl = normalize_tuple(self.dilation, n, fn, "dilation")
        # A mode stays a mode ("same" depends on the input's size); pairs are checked now.
        probe = (max(ks),) * n  # any spatial shape: only the mode/pairs' validity matters here
        pads = normalize_padding(self.padding, probe, ks, st, dl, fn)
        padding = self.padding.lower() if isinstance(self.padding, str) else pads
        _checks.check_preferred_element_type(self.preferred_element_type, fn)
        impl = self.implementation
        if not isinstance(impl, str) or impl not in implementation_names():
            fail(fn, "implementation", f"one of {implementation_names()}", repr(impl))
        precision = tuple(self.precision) if isinstance(self.precision, list) else self.precision
        for name, value in dict(
            kernel_size=ks, strides=st, data_format=fmt, padding=padding, dilation=dl
        ).items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here
        object.__setattr__(self, "precision", precision)

    @classmethod
    def create(
        cls,
        ndim: int,
        kernel_size: IntOrTuple,
        strides: IntOrTuple = 1,
        data_format: str | None = None,
        *,
        fn: str = "LocalConvSpec",
        **options: Any,
    ) -> LocalConvSpec:
        """The spec for ``ndim`` spatial dims; errors name ``fn``.

        Args:
          ndim: the number of spatial dims (an int ``kernel_size`` is repeated that often).
          kernel_size: the window, an int or a tuple of ``ndim`` ints.
          strides: the window strides, an int or a tuple of ``ndim`` ints.
          data_format: ``"channels_last"`` (the default when None) or ``"channels_first"``.
          fn: the public function to name in error messages.
          **options: the keyword options of :class:`ConvOptions`.

        Returns:
          The normalised :class:`LocalConvSpec`.

        Raises:
          TypeError: for an unknown option, or an argument of the wrong kind.
          ValueError: for an argument of the wrong value, naming it.
        """
        for name in options:
            if name not in ConvOptions.__annotations__:
                raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}")
        return cls(
            kernel_size,  # type: ignore[arg-type]  # user forms: __post_init__ normalises them
            strides,  # type: ignore[arg-type]  # as kernel_size
            data_format,  # type: ignore[arg-type]  # as kernel_size
            **options,
            ndim=ndim,
            fn=fn,
        )

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial dims."""
        return len(self.kernel_size)

    def geometry(self, input_shape: tuple[int, ...], fn: str = "jlocalconv") -> Geometry:
        """The :class:`~jlocalconv.geometry.Geometry` for a full input shape (batch included).

        Raises:
          ValueError: if the shape has no channel, an empty spatial dim, or the window
            does not fit, naming ``fn``.
        """
        return make_geometry(
            input_shape,
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation,
            self.data_format,
            fn=fn,
        )

    def options(self) -> dict[str, Any]:
        """Every option, normalised, as keyword arguments for ``local_conv``."""
        return {name: getattr(self, name) for name in ConvOptions.__annotations__}

    def call_options(self) -> dict[str, Any]:
        """The options that are not geometric (for a call that sets its own padding)."""
        options = self.options()
        return {k: v for k, v in options.items() if k not in GEOMETRIC_OPTIONS}


def _spatial_rank(kernel_size: object, ndim: int | None, fn: str) -> int:
    if ndim is not None:
        return ndim
    if isinstance(kernel_size, tuple) and kernel_size:
        return len(kernel_size)
    fail(fn, "kernel_size", "a tuple of ints (or pass ndim)", kernel_size, exc=TypeError)


F = TypeVar("F", bound=Callable[..., Any])


def with_options(function: F) -> F:
    """Shows :class:`ConvOptions` in ``function``'s signature and docstring.

    ``function`` takes ``**options``; its ``__signature__`` lists each option as a
    keyword-only parameter with its default (what ``help``, ``inspect.signature`` and IDEs
    show), and ``{options}`` in its docstring becomes :data:`OPTIONS_DOC`.

    Example:
      >>> import inspect, jlocalconv
      >>> inspect.signature(jlocalconv.local_conv).parameters["implementation"].default
      'auto'
    """
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    defaults = {f.name: f.default for f in dataclasses.fields(LocalConvSpec)}
    for name, annotation in ConvOptions.__annotations__.items():
        if name not in signature.parameters:
            kind, default = inspect.Parameter.KEYWORD_ONLY, defaults[name]
            annotation = getattr(annotation, "__forward_arg__", annotation)  # the source text
            params.append(inspect.Parameter(name, kind, default=default, annotation=annotation))
    # Any function takes the attribute; the Callable bound of F does not declare it.
    function.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    if function.__doc__:
        function.__doc__ = function.__doc__.replace("{options}", OPTIONS_DOC.strip())
    return function


__all__ = ["OPTIONS_DOC", "ConvOptions", "LocalConvSpec", "Unpack", "with_options"]
