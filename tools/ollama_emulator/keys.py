"""The ``~/.ollama/id_ed25519`` key pair that ``ollama serve`` creates on first start.

The standard library has no ed25519, so the public key is derived here with the textbook
Edwards-curve arithmetic of RFC 8032 (only key generation, no signing). The files use the
OpenSSH formats Go's ``x/crypto/ssh`` writes, so tools that read them see a real key pair.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import sys

from .fsutil import PathError, mkdir_all, write_file

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_BASE_Y = (4 * pow(5, _P - 2, _P)) % _P


class KeyError_(Exception):
    """The key pair could not be created; the text is what ``ollama serve`` prints."""


def _recover_x(y: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = (x * pow(2, (_P - 1) // 4, _P)) % _P
    return _P - x if x % 2 else x


def _point_add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, ...]:
    # Extended coordinates (X, Y, Z, T), the "add-2008-hwcd-3" formulas.
    a_x, a_y, a_z, a_t = a
    b_x, b_y, b_z, b_t = b
    e1 = (a_y - a_x) * (b_y - b_x) % _P
    e2 = (a_y + a_x) * (b_y + b_x) % _P
    c = 2 * _D * a_t * b_t % _P
    d = 2 * a_z * b_z % _P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _scalar_mult(scalar: int) -> tuple[int, ...]:
    base_x = _recover_x(_BASE_Y)
    point: tuple[int, ...] = (base_x, _BASE_Y, 1, base_x * _BASE_Y % _P)
    result: tuple[int, ...] = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _point_add(result, point)  # type: ignore[arg-type]
        point = _point_add(point, point)  # type: ignore[arg-type]
        scalar >>= 1
    return result


def ed25519_public_key(seed: bytes) -> bytes:
    """The 32-byte ed25519 public key for a 32-byte private seed."""
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    x, y, z, _ = _scalar_mult(scalar)
    z_inv = pow(z, _P - 2, _P)
    x, y = x * z_inv % _P, y * z_inv % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _public_blob(public: bytes) -> bytes:
    return _ssh_string(b"ssh-ed25519") + _ssh_string(public)


def authorized_key_line(public: bytes) -> str:
    """``ssh-ed25519 AAAA…`` plus newline, as ``ssh.MarshalAuthorizedKey`` writes it."""
    return "ssh-ed25519 " + base64.b64encode(_public_blob(public)).decode() + "\n"


def openssh_private_key(seed: bytes, public: bytes) -> str:
    """The PEM ``OPENSSH PRIVATE KEY`` block for an unencrypted ed25519 key."""
    check = os.urandom(4)
    private = check + check + _ssh_string(b"ssh-ed25519") + _ssh_string(public)
    private += _ssh_string(seed + public) + _ssh_string(b"")
    private += bytes(range(1, 1 + (-len(private)) % 8))
    body = b"openssh-key-v1\0" + _ssh_string(b"none") + _ssh_string(b"none") + _ssh_string(b"")
    body += struct.pack(">I", 1) + _ssh_string(_public_blob(public)) + _ssh_string(private)
    encoded = base64.b64encode(body).decode()
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    return (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + ("\n-----END OPENSSH PRIVATE KEY-----\n")
    )


def initialize_keypair(home: str) -> None:
    """Create ``~/.ollama/id_ed25519{,.pub}`` unless the private key exists (stdout lines).

    Raises KeyError_ with the text ``ollama serve`` prints after ``Error: ``.
    """
    private_path = os.path.join(home, ".ollama", "id_ed25519")
    try:
        os.stat(private_path)
        return
    except FileNotFoundError:
        pass
    except OSError:
        return  # Ollama ignores stat errors other than "does not exist".
    sys.stdout.write(f"Couldn't find '{private_path}'. Generating new private key.\n")
    sys.stdout.flush()
    seed = os.urandom(32)
    public = ed25519_public_key(seed)
    try:
        mkdir_all(os.path.dirname(private_path), 0o755)
    except PathError as exc:
        raise KeyError_(f"could not create directory {exc}") from exc
    try:
        write_file(private_path, openssh_private_key(seed, public).encode(), 0o600)
        public_line = authorized_key_line(public)
        write_file(private_path + ".pub", public_line.encode(), 0o644)
    except PathError as exc:
        raise KeyError_(str(exc)) from exc
    sys.stdout.write(f"Your new public key is: \n\n{public_line}\n")
    sys.stdout.flush()
