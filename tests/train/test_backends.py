"""Back ends gdmd cannot train two networks with are refused, saying what to use instead."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from gdmd.train.distributed import LaunchError, check_backend


def _accelerator(kind: DistributedType, fsdp_version: int | None = None) -> SimpleNamespace:
    plugin = SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version else None
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(
    ("kind", "version", "message"),
    [
        (DistributedType.DEEPSPEED, None, "DeepSpeed is not supported: one accelerate"),
        (DistributedType.FSDP, 1, "FSDP1 is not supported: it is deprecated"),
    ],
)
def test_refused_back_ends_say_why_and_what_instead(kind, version, message: str) -> None:
    with pytest.raises(LaunchError, match=message) as raised:
        check_backend(_accelerator(kind, version))  # type: ignore[arg-type]
    assert "fsdp2.yaml" in str(raised.value)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("kind", "version"),
    [(DistributedType.NO, None), (DistributedType.MULTI_CPU, None), (DistributedType.FSDP, 2)],
)
def test_ddp_and_fsdp2_are_accepted(kind, version) -> None:
    check_backend(_accelerator(kind, version))  # type: ignore[arg-type]


def test_fsdp2_with_an_old_accelerate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.8.0")
    with pytest.raises(LaunchError, match=r"FSDP2 needs accelerate >= 1.13 \(installed: 1.8.0\)"):
        check_backend(_accelerator(DistributedType.FSDP, 2))  # type: ignore[arg-type]
