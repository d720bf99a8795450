"""The packed int4 layout of the W4A8 kernel, and its exact inverse.

A weight ``[N, K]`` of 4-bit codes ``q`` (0..15, ``ŵ = (q − 8) · scale + zero`` per row and group of
``group_size`` input columns, the convention of torchslim's int4 weight-only modules) is stored as one
uint8 tensor ``[ceil(N / 16), K / group_size, 64 + 8 · group_size]``: for each tile of 16 output rows
and each group, one 64-byte head (the 16 rows' bf16 scales, then their 16 bf16 zeros) followed by
``group_size / 8`` chunks of 64 bytes. Chunk ``c`` holds columns ``8c .. 8c + 7`` of the group for the 16
rows: byte ``4r + i`` carries row ``r``'s column ``8c + i`` in its low nibble and column ``8c + 4 + i`` in
its high nibble. A 512-bit load of a chunk is then, after masking the nibbles, two operands of an
AVX-512 VNNI ``vpdpbusd`` (four products per 32-bit lane, one lane per output row) against four
activation bytes broadcast to every lane; a tile's groups follow each other, so each thread streams one
contiguous range. Rows past ``N`` in the last tile are padding (code 8, scale and zero 0).

The activation side follows llama.cpp's Q4_0 × Q8_0 dot product (int8 activations with one scale each,
int4 weights widened to bytes in registers); see also Dettmers et al., "LLM.int8()" (arXiv:2208.07339)
for per-token activation scales and Frantar et al., "GPTQ" (arXiv:2210.17323) for grouped int4 weights.

Example:
    >>> import torch
    >>> codes = torch.randint(0, 16, (20, 64), dtype=torch.uint8)
    >>> scales, zeros = torch.rand(20, 2).bfloat16(), torch.randn(20, 2).bfloat16()
    >>> packed = pack_int4(codes, scales, zeros, group_size=32)
    >>> packed.shape
    torch.Size([2, 2, 320])
    >>> c, s, z = unpack_int4(packed, out_features=20, group_size=32)
    >>> bool(torch.equal(c, codes) and torch.equal(s, scales) and torch.equal(z, zeros))
    True
"""

from __future__ import annotations

import torch

__all__ = ["HEAD_BYTES", "TILE_ROWS", "pack_int4", "packed_shape", "unpack_int4"]

TILE_ROWS = 16  # output rows per tile (one 32-bit lane each of a 512-bit register)
HEAD_BYTES = 64  # per (tile, group): 16 bf16 scales then 16 bf16 zeros


def packed_shape(out_features: int, in_features: int, group_size: int) -> tuple[int, int, int]:
    """Shape of the packed tensor for an ``[out_features, in_features]`` weight.

    Example:
        >>> packed_shape(2048, 5632, 128)
        (128, 44, 1088)
    """
    _check_group_size(in_features, group_size)
    tiles = -(-out_features // TILE_ROWS)
    return tiles, in_features // group_size, HEAD_BYTES + 8 * group_size


def _check_group_size(in_features: int, group_size: int) -> None:
    if group_size < 16 or group_size % 16:
        raise ValueError(f"group_size {group_size} is not a positive multiple of 16")
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group_size {group_size}")


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pack codes ``[N, K]`` (0..15, any integer dtype) and bf16 ``scales``, ``zeros`` ``[N, K / group_size]``.

    Scales and zeros are stored as bf16 (cast when given in another dtype).

    Raises:
        ValueError: shapes that disagree, codes outside 0..15, or a group size that is not a multiple of
            16 dividing ``K``.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be [N, K], got shape {tuple(codes.shape)}")
    n, k = codes.shape
    tiles, groups, block = packed_shape(n, k, group_size)
    if scales.shape != (n, groups) or zeros.shape != (n, groups):
        raise ValueError(
            f"scales and zeros must be [{n}, {groups}], got {tuple(scales.shape)} and {tuple(zeros.shape)}"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("codes must lie in 0..15")
    pad = tiles * TILE_ROWS - n
    q = torch.nn.functional.pad(codes.to(torch.uint8), (0, 0, 0, pad), value=8)
    # [tiles, 16 rows, K/8 chunks, half (low/high nibble), 4 columns] -> [tiles, chunks, 16 rows, 4 bytes]
    q = q.view(tiles, TILE_ROWS, k // 8, 2, 4)
    body = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).permute(0, 2, 1, 3).reshape(tiles, groups, 8 * group_size)
    head = torch.cat([_tile_major(scales, pad), _tile_major(zeros, pad)], dim=-1)  # [tiles, groups, 64]
    return torch.cat([head, body], dim=-1).contiguous()


def _tile_major(values: torch.Tensor, pad: int) -> torch.Tensor:
    # [N, G] -> bf16 bytes [tiles, G, 32]: the 16 rows of a tile side by side for each group.
    v = torch.nn.functional.pad(values.to(torch.bfloat16), (0, 0, 0, pad))
    tiles, groups = v.shape[0] // TILE_ROWS, v.shape[1]
    v = v.view(tiles, TILE_ROWS, groups).permute(0, 2, 1).contiguous()
    return v.view(torch.uint8).view(tiles, groups, 2 * TILE_ROWS)


def unpack_int4(
    packed: torch.Tensor, out_features: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact inverse of :func:`pack_int4`: codes uint8 ``[N, K]``, scales and zeros bf16 ``[N, K / g]``.

    Raises:
        ValueError: a tensor that is not a packed weight of this shape.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 3 or packed.shape[2] != HEAD_BYTES + 8 * group_size:
        raise ValueError(
            f"packed must be uint8 [tiles, groups, {HEAD_BYTES + 8 * group_size}], "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    tiles, groups, _ = packed.shape
    if -(-out_features // TILE_ROWS) != tiles:
        raise ValueError(f"out_features {out_features} does not fit {tiles} tiles of {TILE_ROWS} rows")
    k = groups * group_size
    packed = packed.contiguous()
    head = packed[:, :, :HEAD_BYTES].contiguous()
    halves = head.view(torch.bfloat16).view(tiles, groups, 2, TILE_ROWS)  # (scales, zeros) per group
    scales, zeros = (halves[:, :, i].permute(0, 2, 1).reshape(tiles * TILE_ROWS, groups) for i in (0, 1))
    body = packed[:, :, HEAD_BYTES:].reshape(tiles, k // 8, TILE_ROWS, 4).permute(0, 2, 1, 3)
    q = torch.stack([body & 0x0F, body >> 4], dim=3).reshape(tiles * TILE_ROWS, k)
    return q[:out_features].contiguous(), scales[:out_features].contiguous(), zeros[:out_features].contiguous()
