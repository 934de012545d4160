"""What a built ``libhps_plugin.so`` holds, read from the file without loading it.

Loading would run its load-time registration and needs its dependencies; reading the ELF file needs
neither, so ``doctor`` can describe a library built for another machine. Two things are read:

- the CUDA architectures of its fatbin (section ``.nv_fatbin``), the list ``cuobjdump --list-elf`` /
  ``--list-ptx`` prints: one container header (magic ``0xBA55ED50``) per object, then entries of kind 1
  (PTX) or 2 (ELF cubin), each naming its ``sm_XX`` (layout of CUDA's ``fatbinary_section.h`` and the
  entry header nvcc writes: kind u16, version u16, header size u32, payload size u64, ..., arch u32 at 28);
- its exported dynamic symbols: ``getCreators`` is TensorRT's plugin-library entry point, present only
  when the TensorRT glue was compiled in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries after it
_ENTRY_HEADER = struct.Struct("<HHIQ")  # kind, version, header size, payload size
_ENTRY_ARCH_OFFSET = 28
_KIND_PTX, _KIND_CUBIN = 1, 2
_SECTION = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
_SYMBOL = struct.Struct("<IBBHQQ")  # Elf64_Sym
_SHT_DYNSYM = 11
#: TensorRT's entry point for plugin libraries (IPluginRegistry::loadLibrary), compiled in with the glue
GLUE_SYMBOL = "getCreators"


class NotASharedLibrary(ValueError):
    """The file is not a 64-bit little-endian ELF file."""


@dataclass(frozen=True)
class LibraryContents:
    """The GPU code and the entry points of one shared library."""

    path: Path
    sass: tuple[int, ...]
    """Architectures with machine code (75 = sm_75), ascending."""
    ptx: tuple[int, ...]
    """Architectures with PTX, which newer GPUs JIT-compile (120 = compute_120), ascending."""
    exports: frozenset[str]
    """Defined dynamic symbols."""

    @property
    def tensorrt_glue(self) -> bool:
        return GLUE_SYMBOL in self.exports

    def runs_on(self, major: int, minor: int) -> bool:
        """True if a GPU of compute capability major.minor runs this code: SASS of its major version and a
        minor no higher (sm_86 code runs on 8.9), or PTX of a version no higher (JIT-compiled)."""
        cc = major * 10 + minor
        return any(a // 10 == major and a <= cc for a in self.sass) or any(a <= cc for a in self.ptx)


def read_library(path: Path) -> LibraryContents:
    """The contents of a shared library; NotASharedLibrary if it is not a 64-bit little-endian ELF file."""
    data = Path(path).read_bytes()
    try:
        sections = _sections(data, path)
        sass: set[int] = set()
        ptx: set[int] = set()
        for name, _, offset, size, _ in sections:
            if name == ".nv_fatbin":
                for kind, arch in _fatbin_entries(data[offset:offset + size]):
                    (sass if kind == _KIND_CUBIN else ptx).add(arch)
        exports = _exports(data, sections)
    except NotASharedLibrary:
        raise
    except (struct.error, IndexError, ValueError) as exc:  # offsets past the end: a truncated or damaged file
        raise NotASharedLibrary(f"{path} is a damaged ELF file ({exc})") from None
    return LibraryContents(Path(path), tuple(sorted(sass)), tuple(sorted(ptx)), exports)


def _sections(data: bytes, path: Path) -> list[tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) of every section."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise NotASharedLibrary(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [_SECTION.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    return [(_c_string(data, names_at + h[0]), h[1], h[4], h[5], h[6]) for h in headers]


def _fatbin_entries(section: bytes):
    """(kind, arch) of every entry of every container in a .nv_fatbin section."""
    at = 0
    while at + _FATBIN_HEADER.size <= len(section):
        magic, _, header_size, size = _FATBIN_HEADER.unpack_from(section, at)
        if magic != _FATBIN_MAGIC:
            at += 8  # containers are 8-byte aligned; padding between them is zero
            continue
        entry, end = at + header_size, at + header_size + size
        while entry + _ENTRY_ARCH_OFFSET + 4 <= end:
            kind, _, entry_header, payload = _ENTRY_HEADER.unpack_from(section, entry)
            arch, = struct.unpack_from("<I", section, entry + _ENTRY_ARCH_OFFSET)
            if kind in (_KIND_PTX, _KIND_CUBIN):
                yield kind, arch
            entry += entry_header + payload
        at = end


def _exports(data: bytes, sections) -> frozenset[str]:
    found = set()
    for _, kind, offset, size, link in sections:
        if kind != _SHT_DYNSYM:
            continue
        strings = sections[link][2]
        for at in range(offset, offset + size, _SYMBOL.size):
            name, _, _, shndx, _, _ = _SYMBOL.unpack_from(data, at)
            if shndx:  # 0: undefined, imported from another library
                found.add(_c_string(data, strings + name))
    return frozenset(found - {""})


def _c_string(data: bytes, at: int) -> str:
    return data[at:data.index(b"\0", at)].decode(errors="replace")
