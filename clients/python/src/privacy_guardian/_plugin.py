"""Running an endpoint's plugin here: the only module that touches wasmtime.

Plugins are WebAssembly components of ``guardian:plugin@0.1.0`` or of the
robust ``@0.2.0`` world; both export ``configure`` and ``unshard`` with the same
signatures in their ``algorithm`` interface, which is all a scientist needs.
Built for wasm32-wasip2, they import WASI, which is linked with a context that
grants nothing (no files, environment, network or clock beyond WASI's defaults).

Compiling a component takes a few hundred milliseconds; a :class:`Runtime` keeps
each compiled component (keyed by its SHA-256 digest) for as long as it lives, so
that every later call costs an instantiation (about a millisecond) and the call.
Every call runs in a fresh store with a fuel and a memory budget, so a plugin
that loops or grows without end stops with an error instead of hanging.

wasmtime-py lowers a ``list<u8>`` argument one byte at a time in Python (about
2 µs a byte: 80 KB of shares cost 300 ms). ``unshard`` therefore lowers its byte
lists in bulk into the same C values (``wasmtime_component_val_t``) through the
package's ctypes layer, when that layer has the layout this module checks at
import; otherwise it uses the package's own conversion, slower but the same.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, Sequence

import wasmtime
from wasmtime import component as wc

from .errors import PluginError

#: The exported interfaces this client can call, newest first.
WORLDS = ("guardian:plugin/algorithm@0.2.0", "guardian:plugin/algorithm@0.1.0")
#: Instructions one call may run (a released share is combined in far fewer).
FUEL = 20_000_000_000
#: Linear memory one call may use.
MEMORY_BYTES = 512 * 1024 * 1024


def _bulk_lowering() -> tuple[Any, Callable[..., None]] | None:
    """wasmtime-py's ctypes layer and its error check, if they have the layout
    the bulk lowering writes (checked, not assumed: it is not a public API)."""
    try:
        from wasmtime import _ffi as ffi
        from wasmtime.component._enter import enter_wasm

        val = ffi.wasmtime_component_val_t
        if not (val.kind.offset == 0 and val.kind.size == 1 and 0 < val.of.offset < ctypes.sizeof(val)):
            return None
        for name in (
            "wasmtime_component_vallist_t", "wasmtime_component_vallist_new_uninit",
            "wasmtime_component_val_delete", "wasmtime_component_func_call",
            "WASMTIME_COMPONENT_U8", "WASMTIME_COMPONENT_U64", "WASMTIME_COMPONENT_LIST",
        ):
            getattr(ffi, name)
        return ffi, enter_wasm
    except (ImportError, AttributeError):
        return None


_BULK = _bulk_lowering()


def _lower_bytes(ffi: Any, data: bytes, ptr: Any) -> None:
    """Writes ``data`` as a ``list<u8>`` value at ``ptr``: every element's kind
    and payload set by two strided copies instead of a call per byte."""
    size = ctypes.sizeof(ffi.wasmtime_component_val_t)
    offset = ffi.wasmtime_component_val_t.of.offset
    n = len(data)
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, n)
    if n:
        buffer = bytearray(n * size)
        buffer[0::size] = bytes([ffi.WASMTIME_COMPONENT_U8.value]) * n
        buffer[offset::size] = data
        ctypes.memmove(raw.data, bytes(buffer), n * size)
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
    ptr.contents.of.list = raw


def _lower_byte_lists(ffi: Any, items: Sequence[bytes], ptr: Any) -> None:
    """Writes ``items`` as a ``list<list<u8>>`` value at ``ptr``."""
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, len(items))
    for i, item in enumerate(items):
        _lower_bytes(ffi, item, ctypes.pointer(raw.data[i]))
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
    ptr.contents.of.list = raw


class Runtime:
    """A wasmtime engine with the components it compiled, by digest."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        self._engine = wasmtime.Engine(config)
        self._linker = wc.Linker(self._engine)
        self._linker.add_wasip2()
        self._plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()

    def load(self, digest: str, wasm: bytes | None = None) -> "Plugin":
        """The plugin with SHA-256 ``digest``, compiled from ``wasm`` the first
        time (the caller has checked that ``wasm`` has that digest)."""
        with self._lock:
            plugin = self._plugins.get(digest)
            if plugin is None:
                if wasm is None:
                    raise KeyError(digest)
                plugin = Plugin(self, digest, wasm)
                self._plugins[digest] = plugin
            return plugin

    def cached(self, digest: str) -> bool:
        """Whether the component with ``digest`` is compiled already."""
        with self._lock:
            return digest in self._plugins


class Plugin:
    """One compiled component. Calls are pure: each gets a fresh instance."""

    def __init__(self, runtime: Runtime, digest: str, wasm: bytes) -> None:
        self._runtime = runtime
        self.digest = digest
        try:
            self._component = wc.Component(runtime._engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise PluginError("plugin_not_loadable", f"the plugin {digest[:12]} is not a loadable component: {e}") from None
        self._interface = None
        for name in WORLDS:
            index = self._component.get_export_index(name)
            if index is not None:
                self._interface = index
                self.world = name.rsplit("@", 1)[1]
                break
        if self._interface is None:
            raise PluginError(
                "plugin_not_loadable",
                f"the plugin {digest[:12]} exports neither guardian:plugin/algorithm@0.1.0 nor @0.2.0",
            )
        self._exports = {}
        for func in ("info", "configure", "unshard"):
            index = self._component.get_export_index(func, self._interface)
            if index is None:
                raise PluginError("plugin_not_loadable", f"the plugin {digest[:12]} does not export {func}")
            self._exports[func] = index

    def _call(self, func: str, *args: Any, bulk: bool = False) -> Any:
        engine = self._runtime._engine
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_fuel(FUEL)
        store.set_limits(memory_size=MEMORY_BYTES)
        try:
            instance = self._runtime._linker.instantiate(store, self._component)
            function = instance.get_func(store, self._exports[func])
            assert function is not None
            if bulk and _BULK is not None:
                result = _call_unshard_bulk(_BULK, function, store, *args)
            else:
                result = function(store, *args)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise PluginError("plugin_trap", f"the plugin {self.digest[:12]} stopped in {func}: {e}") from None
        if isinstance(result, wc.Variant):
            # The plugin's own `error` case: its message is written for people.
            tag = str(result.tag)
            raise PluginError("plugin_" + tag.replace("-", "_"), f"the plugin refused ({tag}): {result.payload}")
        return result

    def info(self) -> dict[str, str]:
        """The plugin's name, version, description and params schema."""
        record = self._call("info")
        return {key: getattr(record, key) for key in ("name", "version", "description", "params-schema")}

    def configure(self, params_json: str) -> bytes:
        """The canonical configuration bytes of an endpoint's params."""
        config = self._call("configure", params_json)
        if not isinstance(config, (bytes, bytearray)):
            raise PluginError("plugin_bad_output", f"configure returned {type(config).__name__}, not bytes")
        return bytes(config)

    def unshard(self, config: bytes, shares: Sequence[bytes], count: int, *, bulk: bool = True) -> str:
        """Combines every server's released share (server-index order) into the
        result's JSON text; ``bulk=False`` lowers the arguments with
        wasmtime-py's own conversion (to compare)."""
        text = self._call("unshard", bytes(config), [bytes(s) for s in shares], count, bulk=bulk)
        if not isinstance(text, str):
            raise PluginError("plugin_bad_output", f"unshard returned {type(text).__name__}, not a string")
        return text


def _call_unshard_bulk(bulk: tuple[Any, Callable[..., None]], function: Any, store: Any,
                       config: bytes, shares: Sequence[bytes], count: int) -> Any:
    """``function(store, config, shares, count)`` for ``unshard``'s signature,
    with the byte lists lowered in bulk; the result is lifted by wasmtime-py."""
    ffi, enter_wasm = bulk
    result_type = function.type(store).result
    params = (ffi.wasmtime_component_val_t * 3)()
    lowered = 0
    try:
        _lower_bytes(ffi, config, ctypes.pointer(params[0]))
        lowered = 1
        _lower_byte_lists(ffi, shares, ctypes.pointer(params[1]))
        lowered = 2
        params[2].kind = ffi.WASMTIME_COMPONENT_U64
        params[2].of.u64 = count
        lowered = 3
        result = ffi.wasmtime_component_val_t()

        def run() -> Any:
            return ffi.wasmtime_component_func_call(
                ctypes.byref(function._func), store._context(), params, 3, ctypes.byref(result), 1
            )

        enter_wasm(run)
        return result_type.convert_from_c(result)
    finally:
        for i in range(lowered):
            ffi.wasmtime_component_val_delete(ctypes.byref(params[i]))
