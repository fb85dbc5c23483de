"""Tests for seer_core.models: trunk registry, SwAV head, checkpointing, SyncBN, export, sizing.

Big models are only ever built on the meta device; real forward passes use small trunks at
32-64 px. Reference figures come from torchvision's weight metadata (read locally, nothing is
downloaded) and from VISSL's SEER configs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from seer_core.models import (
    SEER_HEAD_HIDDEN,
    SEER_HEAD_OUT,
    SEER_PROTOTYPES,
    SEER_REGNETS,
    TRUNK_NAMES,
    CheckpointedStage,
    SwAVHead,
    SwAVModel,
    build_swav_model,
    build_trunk,
    convert_sync_batchnorm,
    count_parameters,
    enable_activation_checkpointing,
    estimate_gflops,
    export_trunk_state_dict,
    model_table,
    regnet_block_params,
    sync_groups,
    torchvision_architecture,
)

W = torchvision.models
# torchvision's published size and cost of each architecture we share with it (weights metadata).
TORCHVISION_WEIGHTS = {
    "regnety_400mf": W.RegNet_Y_400MF_Weights.IMAGENET1K_V1,
    "regnety_800mf": W.RegNet_Y_800MF_Weights.IMAGENET1K_V1,
    "regnety_8gf": W.RegNet_Y_8GF_Weights.IMAGENET1K_V1,
    "regnety_16gf": W.RegNet_Y_16GF_Weights.IMAGENET1K_V1,
    "regnety_32gf": W.RegNet_Y_32GF_Weights.IMAGENET1K_V1,
    "regnety_128gf": W.RegNet_Y_128GF_Weights.IMAGENET1K_SWAG_LINEAR_V1,
    "resnet18": W.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": W.ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v2": W.MobileNet_V2_Weights.IMAGENET1K_V1,
}
# Final width per SEER model (ClassyVision / torchvision / VISSL eval configs).
SEER_WIDTHS = {
    "regnety_8gf": 2016,
    "regnety_16gf": 3024,
    "regnety_32gf": 3712,
    "regnety_64gf": 4920,
    "regnety_128gf": 7392,
    "regnety_256gf": 10444,
}
SMALL_NAMES = [n for n in TRUNK_NAMES if n not in SEER_REGNETS]


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Two shared cores: more intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_trunk(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_trunk(name)


def test_trunk_names() -> None:
    assert set(TRUNK_NAMES) == {*SEER_WIDTHS, *SMALL_NAMES}
    assert set(SMALL_NAMES) == {
        "regnety_400mf",
        "regnety_800mf",
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "tiny",
        "small",
    }
    with pytest.raises(ValueError, match="unknown trunk"):
        build_trunk("regnety_1tf")


@pytest.mark.parametrize("name", list(SEER_WIDTHS))
def test_seer_trunk_width_on_meta(name: str) -> None:
    trunk = meta_trunk(name)
    assert trunk.out_features == SEER_WIDTHS[name]
    out = trunk(torch.empty(2, 3, 64, 64, device="meta"))
    assert out.shape == (2, SEER_WIDTHS[name])
    assert all(p.is_meta for p in trunk.parameters())
    assert all(b.is_meta for b in trunk.buffers())


def test_seer_stage_widths_match_vissl_eval_configs() -> None:
    # VISSL linear-eval configs feed res4 (stage 3) and res5 (stage 4) to their eval heads.
    assert regnet_block_params("regnety_64gf").widths[2:] == [1968, 4920]
    assert regnet_block_params("regnety_256gf").widths[2:] == [4103, 10444]
    assert regnet_block_params("regnety_256gf").group_widths == [373] * 4


@pytest.mark.parametrize("name", list(TORCHVISION_WEIGHTS))
def test_parameter_count_and_gflops_match_torchvision(name: str) -> None:
    meta = TORCHVISION_WEIGHTS[name].meta
    trunk = meta_trunk(name)
    classifier = trunk.out_features * 1000 + 1000
    assert count_parameters(trunk) + classifier == meta["num_params"]
    # torchvision's "_ops" counts the classifier too (D*1000 MACs) and is rounded to 3 places.
    gflops = estimate_gflops(trunk) + trunk.out_features * 1000 / 1e9
    assert gflops == pytest.approx(meta["_ops"], abs=2e-3)


@pytest.mark.parametrize("name", list(SEER_WIDTHS))
def test_seer_gflops_match_their_names(name: str) -> None:
    nominal = float(name.removeprefix("regnety_").removesuffix("gf"))
    assert estimate_gflops(meta_trunk(name)) == pytest.approx(nominal, rel=0.06)


def test_regnety_256gf_is_seer_size_on_meta() -> None:
    # SEER: "a RegNetY with 1.3B parameters". The trunk alone is 1.27B; with the SEER head
    # (10444->8192->8192->256, 16K prototypes) it is 1.43B.
    with torch.device("meta"):
        model = build_swav_model(
            "regnety_256gf", SEER_HEAD_HIDDEN, SEER_HEAD_OUT, False, SEER_PROTOTYPES
        )
    assert all(p.is_meta for p in model.parameters())
    assert count_parameters(model.trunk) == pytest.approx(1.3e9, rel=0.03)
    assert 1.3e9 < count_parameters(model) < 1.5e9
    head = model.head
    assert count_parameters(head) == (
        10444 * 8192 + 8192 + 8192 * 8192 + 8192 + 8192 * 256 + 256 + 256 * 16000
    )


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_small_trunks_map_images_to_features(name: str) -> None:
    torch.manual_seed(0)
    trunk = build_trunk(name)
    out = trunk(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, trunk.out_features)
    assert torch.isfinite(out).all()


def test_tiny_is_tiny() -> None:
    n = count_parameters(build_trunk("tiny"))
    assert 2_000 <= n <= 100_000


def test_small_sits_between_tiny_and_regnety_400mf() -> None:
    n = count_parameters(build_trunk("small"))
    assert count_parameters(build_trunk("tiny")) * 10 < n < count_parameters(
        build_trunk("regnety_400mf")) / 4
    out = build_trunk("small").eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 256)


# ------------------------------------------------------------------------------- SwAV head


@pytest.mark.parametrize("batchnorm", [False, True])
def test_head_layers_dims_and_unit_norm(batchnorm: bool) -> None:
    torch.manual_seed(0)
    head = SwAVHead(24, [32, 16], 8, batchnorm, [10, 7])
    kinds = [type(m) for m in head.projection]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU] if batchnorm else [nn.Linear, nn.ReLU]
    assert kinds == block * 2 + [nn.Linear]
    assert [m.out_features for m in head.projection if isinstance(m, nn.Linear)] == [32, 16, 8]
    z, scores = head(torch.randn(5, 24))
    assert z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    assert [s.shape for s in scores] == [(5, 10), (5, 7)]
    assert all(p.bias is None for p in head.prototypes)


def test_head_accepts_single_prototype_count_and_rejects_bad_dims() -> None:
    head = SwAVHead(4, [], 3, False, 6)
    assert head.n_prototypes == (6,)
    assert len(head.projection) == 1
    with pytest.raises(ValueError):
        SwAVHead(4, [8], 3, False, [])
    with pytest.raises(ValueError):
        SwAVHead(4, [0], 3, False, 5)


def test_normalize_prototypes() -> None:
    torch.manual_seed(0)
    head = SwAVHead(8, [], 4, False, [6, 3])
    params = head.prototype_parameters()
    assert [p.shape for p in params] == [(6, 4), (3, 4)]
    assert all(p is layer.weight for p, layer in zip(params, head.prototypes))
    with torch.no_grad():
        for p in params:
            p.mul_(torch.rand(p.shape[0], 1) * 5 + 0.1)
    assert not torch.allclose(params[0].norm(dim=1), torch.ones(6))
    direction = params[0][2] / params[0][2].norm()
    head.normalize_prototypes()
    for p in params:
        torch.testing.assert_close(p.norm(dim=1), torch.ones(p.shape[0]))
        assert p.requires_grad
    torch.testing.assert_close(params[0][2], direction)


def test_scores_are_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    head = SwAVHead(16, [32], 16, False, 50)
    x = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = head.projection(x)
        z, scores = head(x)
    assert hidden.dtype == torch.bfloat16  # autocast really is active for the MLP
    assert z.dtype == torch.float32
    assert scores[0].dtype == torch.float32
    exact = z @ head.prototypes[0].weight.T
    torch.testing.assert_close(scores[0], exact, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(torch.exp(scores[0] / 0.05)).all()
    scores[0].sum().backward()
    assert head.prototypes[0].weight.grad is not None


def test_swav_model_runs_trunk_per_group_in_order() -> None:
    torch.manual_seed(0)
    model = build_swav_model("tiny", [32], 16, True, [20, 30])
    assert isinstance(model, SwAVModel)
    assert model.head.in_dim == model.trunk.out_features
    model.eval()
    batch = 3
    big = torch.randn(2 * batch, 3, 64, 64)
    small = torch.randn(4 * batch, 3, 32, 32)
    z, scores = model([big, small])
    assert z.shape == (6 * batch, 16)
    assert [s.shape for s in scores] == [(6 * batch, 20), (6 * batch, 30)]
    features = torch.cat([model.trunk(big), model.trunk(small)])
    z_ref, scores_ref = model.head(features)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(scores[1], scores_ref[1])


# --------------------------------------------------------------- activation checkpointing


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [
        t
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for t in (m.running_mean, m.running_var, m.num_batches_tracked)
    ]


@pytest.mark.parametrize("name", ["tiny", "resnet18", "mobilenet_v2"])
def test_activation_checkpointing_is_equivalent(name: str) -> None:
    torch.manual_seed(0)
    plain = build_trunk(name)
    ckpt = copy.deepcopy(plain)
    enable_activation_checkpointing(ckpt)
    assert any(isinstance(m, CheckpointedStage) for m in ckpt.modules())
    x = torch.randn(4, 3, 32, 32)
    weight = torch.randn(plain.out_features)
    outs = []
    for model in (plain, ckpt):
        model.train()
        out = model(x)
        (out * weight).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    grads_plain = [p.grad for p in plain.parameters()]
    grads_ckpt = [p.grad for p in ckpt.parameters()]
    assert len(grads_plain) == len(grads_ckpt)
    for a, b in zip(grads_plain, grads_ckpt):
        torch.testing.assert_close(a, b)
    # BN running statistics must move once per step, not again in the recomputation.
    for a, b in zip(_bn_stats(plain), _bn_stats(ckpt)):
        torch.testing.assert_close(a, b)


def test_checkpointing_moves_every_tracked_norm_once() -> None:
    """Not only BatchNorm: any norm layer tracking running statistics (here InstanceNorm) moves
    them once per step in a checkpointed stage, as without checkpointing. The recomputation's
    update is undone by the snapshot the step's skip guard uses too (`RunningStats`)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True),
                          nn.Conv2d(4, 4, 3))
    ckpt = CheckpointedStage(copy.deepcopy(plain))
    x = torch.randn(2, 3, 8, 8)
    for model in (plain, ckpt):
        model.train()
        model(x).sum().backward()
    for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_checkpointing_recomputes_only_when_training() -> None:
    torch.manual_seed(0)
    trunk = build_trunk("tiny")
    enable_activation_checkpointing(trunk)
    enable_activation_checkpointing(trunk)  # idempotent: no wrapper inside a wrapper
    stages = [m for m in trunk.modules() if isinstance(m, CheckpointedStage)]
    assert len(stages) == 4
    assert not any(isinstance(s.stage, CheckpointedStage) for s in stages)
    calls = []
    stages[1].stage.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    trunk.train()
    trunk(x).sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward
    calls.clear()
    with torch.no_grad():
        trunk(x)
    trunk.eval()
    trunk(x).sum().backward()
    assert len(calls) == 2  # once each: nothing to recompute


def test_checkpointed_state_dict_is_interchangeable() -> None:
    torch.manual_seed(0)
    plain = build_trunk("tiny")
    ckpt = build_trunk("tiny")
    enable_activation_checkpointing(ckpt)
    ckpt_keys = list(ckpt.state_dict())
    assert ckpt_keys == list(plain.state_dict())
    assert not any("checkpointed" in k for k in ckpt_keys)
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()):
        torch.testing.assert_close(a, b)
    fresh = build_trunk("tiny")
    fresh.load_state_dict(ckpt.state_dict(), strict=True)


def test_checkpointing_rejects_unknown_architecture() -> None:
    with pytest.raises(TypeError):
        enable_activation_checkpointing(nn.Sequential(nn.Conv2d(3, 4, 3)))


# ------------------------------------------------------------------------------- SyncBN


def test_sync_groups() -> None:
    assert sync_groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sync_groups(5, 2) == [[0, 1], [2, 3], [4]]
    assert sync_groups(8, 0) == [list(range(8))]
    assert sync_groups(8, -1) == [list(range(8))]
    assert sync_groups(8, 64) == [list(range(8))]


def test_convert_sync_batchnorm_is_noop_without_dist() -> None:
    assert not dist.is_initialized()
    model = build_swav_model("tiny", [16], 8, True, 5)
    assert convert_sync_batchnorm(model, 64) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_convert_sync_batchnorm_is_noop_for_one_rank(tmp_path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = build_trunk("tiny")
        assert convert_sync_batchnorm(model, 0) is model
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    finally:
        dist.destroy_process_group()


def _sync_bn_worker(rank: int, world: int, store_path: str, results: dict) -> None:
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        seen = {}
        for group_size in (1, 0):
            model = convert_sync_batchnorm(build_trunk("tiny"), group_size)
            bns = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
            groups = {
                tuple(dist.get_process_group_ranks(m.process_group or dist.group.WORLD))
                for m in bns
            }
            seen[group_size] = (len(bns), sorted(groups))
        results[rank] = seen
    finally:
        dist.destroy_process_group()


def test_convert_sync_batchnorm_groups_consecutive_ranks(tmp_path) -> None:
    world = 2
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in build_trunk("tiny").modules())
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _sync_bn_worker,
            args=(world, str(tmp_path / "store"), results),
            nprocs=world,
            start_method="fork",
        )
        results = dict(results)
    for rank in range(world):
        assert results[rank][1] == (n_bn, [(rank,)])
        assert results[rank][0] == (n_bn, [(0, 1)])


# ------------------------------------------------------------------------------- export

REFERENCES = {
    "regnety_400mf": lambda: torchvision.models.regnet_y_400mf(weights=None),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "tiny": lambda: torchvision_architecture("tiny"),
    "small": lambda: torchvision_architecture("small"),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_export_round_trip_into_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = build_swav_model(name, [16], 8, False, 5)
    enable_activation_checkpointing(model)
    model.train()
    z, _ = model([torch.randn(4, 3, 32, 32)])  # moves BN running stats away from their init
    z.sum().backward()

    exported = export_trunk_state_dict(model)
    assert not any(k.startswith(("head", "trunk.", "fc.", "classifier.")) for k in exported)
    assert not any("checkpointed" in k for k in exported)
    assert all(v.device.type == "cpu" for v in exported.values())
    # As stored from a DDP-wrapped model: same export.
    ddp_style = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert list(export_trunk_state_dict(ddp_style)) == list(exported)

    reference = REFERENCES[name]()
    setattr(reference, "classifier" if name == "mobilenet_v2" else "fc", nn.Identity())
    reference.load_state_dict(exported, strict=True)
    model.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model.trunk(x))


def test_export_strips_ddp_and_checkpoint_wrappers(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_swav_model("tiny", [16], 8, False, 5)
    enable_activation_checkpointing(model)
    expected = export_trunk_state_dict(model)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        assert all(k.startswith("module.") for k in wrapped.state_dict())
        exported = export_trunk_state_dict(wrapped)
    finally:
        dist.destroy_process_group()
    assert list(exported) == list(expected)
    for key, value in exported.items():
        torch.testing.assert_close(value, expected[key])
    # Raw names (as named_parameters gives them) lose the wrapper segment too.
    raw = {f"module.{k}": p for k, p in model.named_parameters()}
    assert any(".checkpointed." in k for k in raw)
    assert set(export_trunk_state_dict(raw)) <= set(expected)


# ------------------------------------------------------------------------------- table


def test_model_table_lists_every_trunk_aligned() -> None:
    table = model_table()
    lines = table.splitlines()
    assert len(lines) == len(TRUNK_NAMES) + 1
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert lines[0].split()[0] == "trunk"
    for name, line in zip(TRUNK_NAMES, lines[1:]):
        cells = line.split()
        assert cells[0] == name
        assert int(cells[3]) == meta_trunk(name).out_features
        has_head = cells[2] != "-"
        assert has_head == (name in SEER_REGNETS)
    assert model_table(["tiny"]).count("\n") == 1
