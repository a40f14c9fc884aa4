"""Checkpoints: the real shared prior, Lightning checkpoints, export, and every kind of bad file."""

from __future__ import annotations

import argparse
import copy

import lightning as L
import pytest
import torch

from gdp_lightning.prior import (
    CheckpointError,
    create_model,
    export_state_dict,
    get_preset,
    load_prior,
    matching_presets,
    read_checkpoint,
    save_state_dict,
)

from .helpers import TINY, _tiny


def test_shared_prior_loads_strictly_from_float16(skimage64_checkpoint):
    raw = torch.load(skimage64_checkpoint, weights_only=True)
    assert {v.dtype for v in raw.values()} == {torch.float16}
    model = load_prior("skimage64", skimage64_checkpoint)
    assert not model.training
    sd = model.state_dict()
    assert list(sd) == list(raw)
    assert all(sd[k].dtype == torch.float32 and torch.equal(sd[k], raw[k].float()) for k in raw)
    assert sum(p.numel() for p in model.parameters()) == 11_066_310
    assert matching_presets(raw) == ["skimage64"]


def test_export_roundtrip_reproduces_outputs(tmp_path):
    model = _tiny()
    model.set_compute_dtype(torch.float16)  # a fp16 body still exports float32 values
    path = save_state_dict(model, tmp_path / "sub" / "exported.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["exported.pt"], "temporary file left behind"
    sd = torch.load(path, weights_only=True)
    assert list(sd) == list(model.state_dict())
    assert {v.dtype for v in sd.values()} == {torch.float32}
    fresh = load_prior(_tiny_spec(), path)
    fresh.set_compute_dtype(torch.float16)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([4, 800])
    with torch.no_grad():
        assert torch.equal(fresh(x, t), model(x, t))


def _tiny_spec():
    spec = get_preset("skimage64")
    spec.unet = spec.unet.from_dict({**spec.unet.to_dict(), **TINY, "channel_mult": "1,2", "num_heads": 4})
    spec.name, spec.source = "tiny", None
    return spec


# ----------------------------------------------------------- Lightning
class _Restorer(L.LightningModule):
    """A minimal LightningModule holding a prior and its EMA copy, as a fine-tuning run would."""

    def __init__(self):
        super().__init__()
        self.prior = torch.nn.Module()
        self.prior.unet = create_model(**TINY)
        self.ema_unet = copy.deepcopy(self.prior.unet).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return (self.prior.unet(x, torch.zeros(len(x), dtype=torch.long)) - 1).square().mean()

    def on_train_batch_end(self, *args):
        with torch.no_grad():
            for e, p in zip(self.ema_unet.parameters(), self.prior.unet.parameters()):
                e.lerp_(p, 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.prior.unet.parameters(), lr=0.1)


def test_lightning_checkpoint_loads_its_ema_weights(tmp_path):
    module = _Restorer()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 3, 32, 32)), batch_size=2)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    assert "pytorch-lightning_version" in torch.load(path, weights_only=True)

    loaded = load_prior(_tiny_spec(), path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, module.ema_unet.state_dict()[k]), k
    assert not torch.equal(module.ema_unet.out[2].weight, module.prior.unet.out[2].weight)
    # export of the Lightning module gives a plain state dict of the EMA copy
    assert list(export_state_dict(module)) == list(module.ema_unet.state_dict())


# ------------------------------------------------------------ bad files
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: the file is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)


def test_released_prior_without_file_says_where_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"openaipublic.*256x256_diffusion_uncond\.pt"):
        load_prior("imagenet256_uncond", tmp_path / "256x256_diffusion_uncond.pt")


def test_truncated_checkpoint(tmp_path, skimage64_checkpoint):
    data = skimage64_checkpoint.read_bytes()
    bad = tmp_path / "skimage64_partial.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"skimage64_partial\.pt: not a readable PyTorch checkpoint.*truncated") as e:
        load_prior("skimage64", bad)
    assert "\n" not in str(e.value)


def test_state_dict_of_another_architecture(tmp_path, skimage64_checkpoint):
    other = tmp_path / "tiny.pt"
    torch.save(create_model(**TINY).state_dict(), other)
    with pytest.raises(CheckpointError) as e:
        load_prior("skimage64", other)
    msg = str(e.value)
    assert "\n" not in msg
    assert "tiny.pt: does not fit the UNet" in msg
    assert "missing keys" in msg and "unexpected keys" in msg and "wrong shapes" in msg
    assert "no preset fits it (num_channels=32, learn_sigma=True, class_cond=False)" in msg

    spec = get_preset("skimage64")
    spec.unet.num_res_blocks = 3
    with torch.device("meta"):
        expected = spec.build_unet().state_dict()
    n_missing = len(set(expected) - set(torch.load(skimage64_checkpoint, weights_only=True)))
    with pytest.raises(
        CheckpointError, match=rf"{n_missing} missing keys.*fits preset 'skimage64'.*--config configs/prior/skimage64.yaml"
    ):
        load_prior(spec, skimage64_checkpoint)


def test_counts_of_mismatched_keys(tmp_path):
    sd = create_model(**TINY).state_dict()
    sd.pop("out.2.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["time_embed.0.weight"] = torch.zeros(5, 5)
    path = tmp_path / "edited.pt"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(out\.2\.bias\); 1 unexpected keys \(extra\.weight\); "
        r"1 keys with wrong shapes \(time_embed\.0\.weight: checkpoint \[5, 5\] vs model \[128, 32\]\)",
    ):
        load_prior(_tiny_spec(), path)


def test_pickle_needs_explicit_trust(tmp_path):
    model = create_model(**TINY)
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match=r"with_args\.pt: holds pickled Python objects.*trust_checkpoint=True") as e:
        load_prior(_tiny_spec(), path)
    assert "\n" not in str(e.value)
    loaded = load_prior(_tiny_spec(), path, trust_checkpoint=True)
    assert torch.equal(loaded.input_blocks[0][0].weight, model.input_blocks[0][0].weight)


def test_file_without_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state dict"):
        load_prior(_tiny_spec(), path)
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match=r"keys \[epoch, lr\] but no tensors"):
        load_prior(_tiny_spec(), path)


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    path = save_state_dict(create_model(**TINY), tmp_path / "perm.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
