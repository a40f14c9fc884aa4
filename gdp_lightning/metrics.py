"""Metrics of restored images, computed on 8-bit outputs (the GDP paper's protocol).

Images are float tensors ``(N, C, H, W)`` in [0, 1]. Every metric that compares images first rounds them to 8-bit
levels (:func:`to_8bit`), as the restored images are stored as 8-bit files. PSNR, SSIM, LPIPS and FID come from
torchmetrics; the consistency and the lightness order error (LOE) are computed here.

LPIPS and FID need pretrained weights that torchvision / torch-fidelity would otherwise download on first use. This
module never downloads: it checks the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e.
``$TORCH_HOME/hub/checkpoints``) first and raises :class:`MetricUnavailable` with a one-line message saying which file to
fetch, from where and into which folder.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Union
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import GDPError

__all__ = [
    "MetricUnavailable",
    "to_8bit",
    "psnr",
    "ssim",
    "consistency",
    "lightness_order_error",
    "LPIPS",
    "FID",
    "ImageMetrics",
    "INCEPTION_WEIGHTS_URL",
    "METRIC_NAMES",
    "DATASET_METRICS",
]

#: Where torch-fidelity (0.3, 0.4) downloads the FID Inception weights from; the file lands in the hub checkpoints dir.
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)

#: The torchvision weights enums torchmetrics' LPIPS loads (``<enum>.DEFAULT``), by LPIPS ``net_type``.
_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}

#: Metric names understood by :class:`ImageMetrics`.
METRIC_NAMES = ("psnr", "ssim", "lpips", "fid", "consistency", "loe")
#: metrics of a whole set of images (one value per stage and scale, not per image)
DATASET_METRICS = ("fid",)
_NEED_GT = ("psnr", "ssim", "lpips", "fid")


class MetricUnavailable(GDPError):
    """A requested metric cannot run here (missing weights or package); the message is one line saying what to
    download and where."""


def _hub_checkpoints() -> Path:
    """The folder ``torch.hub.load_state_dict_from_url`` reads cached weights from (and would download into)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_weights(url: str, what: str) -> Optional[str]:
    """``None`` when the file ``url`` names is in the hub cache, else the one-line message saying how to get it."""
    name = os.path.basename(urlparse(url).path)
    folder = _hub_checkpoints()
    if (folder / name).is_file():
        return None
    return (
        f"{what} needs the weights file {name}, missing from the torch hub cache: download {url} into {folder}/ "
        f"(the folder is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another cache)"
    )


def _torch_fidelity_available() -> bool:
    """Whether ``torch_fidelity`` (torchmetrics' standard FID Inception) is installed."""
    return importlib.util.find_spec("torch_fidelity") is not None


def to_8bit(x: Tensor) -> Tensor:
    """Round to 8-bit levels: ``round(clamp(x, 0, 1) * 255) / 255``, same floating dtype.

    :param x: images in [0, 1]
    :return: ``x`` as the values an 8-bit file would store, still in [0, 1]
    """
    return (x.clamp(0, 1) * 255).round() / 255


def _check_pair(x: Tensor, gt: Tensor, what: str) -> None:
    if x.shape != gt.shape or x.ndim != 4:
        raise ValueError(f"{what}: expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(gt.shape)}")


def psnr(x: Tensor, gt: Tensor) -> Tensor:
    """PSNR in dB per image, on the 8-bit-quantized images (data range 1, equivalently 255 on the 8-bit scale).

    Identical images (after quantization) give ``inf``.

    :param x: restored images ``(N, C, H, W)`` in [0, 1]
    :param gt: ground truth, same shape
    :return: ``(N,)`` float64
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(x, gt, "psnr")
    return peak_signal_noise_ratio(
        to_8bit(x.double()), to_8bit(gt.double()), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(x: Tensor, gt: Tensor) -> Tensor:
    """SSIM per image (torchmetrics: gaussian window, sigma 1.5, i.e. 11 × 11; data range 1) on the 8-bit images.

    torchmetrics pads by reflection, which needs the window's half-width below both image sides, so images with a
    side under 6 pixels use a smaller gaussian (sigma ``p / 3.5``, window ``2p + 1`` with ``p = min(H, W) - 1``, at
    least 3 × 3). Sides under 2 pixels raise ``ValueError``.

    :param x: restored images ``(N, C, H, W)`` in [0, 1]
    :param gt: ground truth, same shape
    :return: ``(N,)``, 1 for identical images
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, gt, "ssim")
    short = min(x.shape[-2:])
    if short < 2:
        raise ValueError(f"ssim: images of size {tuple(x.shape[-2:])} are too small (sides of at least 2 pixels)")
    # torchmetrics' gaussian window has half-width int(3.5 * sigma + 0.5): 5 for the standard sigma 1.5
    sigma = 1.5 if short > 5 else (short - 1) / 3.5
    return structural_similarity_index_measure(
        to_8bit(x.double()), to_8bit(gt.double()), sigma=sigma, reduction="none", data_range=1.0
    )


def consistency(ax: Tensor, y: Tensor) -> Tensor:
    """The paper's consistency: per image, the mean over channels and pixels of ``(255 A(x̂) - 255 y)^2``.

    :param ax: the degradation applied to the restored image, ``A(x̂)``, computed by the caller
    :param y: the observation, same shape
    :return: ``(N,)`` float64
    """
    if ax.shape != y.shape:
        raise ValueError(f"consistency: A(x) has shape {tuple(ax.shape)} but y has shape {tuple(y.shape)}")
    d = 255 * (ax.double() - y.double())
    return d.pow(2).reshape(d.shape[0], -1).mean(1)


def _lightness(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` in [0, 1] -> ``(N, 1, H, W)`` max over channels of the 8-bit values, on the 0-255 scale."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"lightness_order_error: expected (N, 1 or 3, H, W) images, got {tuple(x.shape)}")
    return (to_8bit(x.double()) * 255).amax(1, keepdim=True)


def lightness_order_error(enhanced: Tensor, reference: Tensor, size: int = 50, *, chunk: int = 1024) -> Tensor:
    """Lightness order error (LOE, Wang et al. 2013, "Naturalness preserved enhancement ...") per image.

    As the customary MATLAB code: the lightness ``L`` is the max over the RGB channels (0-255 scale of the 8-bit
    images); both lightness maps are resized by ``r = size / min(H, W)`` to ``round(H r) × round(W r)`` (bilinear,
    antialiased, so the shorter side is ``size``; skipped when already that size; images whose shorter side is below
    ``size`` are upsampled, as there); then LOE is the mean over pixels ``p`` of the number of pixels ``q`` where
    ``L_ref(p) >= L_ref(q)`` and ``L_enh(p) >= L_enh(q)`` disagree. The resized maps are not rounded back to 8 bits.
    Lower is better; 0 when the enhancement keeps the order of the reference's lightness.

    :param enhanced: enhanced images ``(N, 1 or 3, H, W)`` in [0, 1]
    :param reference: the reference, usually the low-light input (no ground truth needed), same ``N, H, W``
    :param size: the shorter side the lightness maps are resized to
    :param chunk: how many pixels ``p`` are compared at once (memory is ``N × chunk × pixels`` booleans)
    :return: ``(N,)`` float64
    """
    same = enhanced.ndim == reference.ndim == 4 and enhanced.shape[0] == reference.shape[0]
    if not same or enhanced.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"lightness_order_error: the enhanced images {tuple(enhanced.shape)} and the reference "
                         f"{tuple(reference.shape)} must share N, H and W")
    le, lr = _lightness(enhanced), _lightness(reference)
    h, w = le.shape[-2:]
    r = size / min(h, w)
    hd, wd = max(1, math.floor(h * r + 0.5)), max(1, math.floor(w * r + 0.5))
    if (hd, wd) != (h, w):
        le = F.interpolate(le, size=(hd, wd), mode="bilinear", antialias=True, align_corners=False)
        lr = F.interpolate(lr, size=(hd, wd), mode="bilinear", antialias=True, align_corners=False)
    le, lr = le.flatten(1), lr.flatten(1)  # (N, M)
    m = le.shape[1]
    count = torch.zeros(le.shape[0], dtype=torch.float64, device=le.device)
    for start in range(0, m, chunk):
        pe, pr = le[:, start : start + chunk, None], lr[:, start : start + chunk, None]
        count += ((pr >= lr[:, None, :]) ^ (pe >= le[:, None, :])).sum((1, 2)).double()
    return count / m


class LPIPS:
    """LPIPS per image (torchmetrics' ``LearnedPerceptualImagePatchSimilarity``, inputs in [0, 1]) on the 8-bit
    images; lower is more similar.

    torchmetrics ships the linear-layer weights; the backbone is torchvision's ImageNet model (``<Weights>.DEFAULT``),
    which torchvision reads from the torch hub cache. The constructor checks that file first and raises
    :class:`MetricUnavailable` rather than letting torchvision download it.

    :param net_type: the backbone, ``"alex"`` (default, as the paper), ``"vgg"`` or ``"squeeze"``
    """

    def __init__(self, net_type: str = "alex"):
        if net_type not in _LPIPS_BACKBONES:
            raise ValueError(f"LPIPS: net_type must be one of {sorted(_LPIPS_BACKBONES)}, got {net_type!r}")
        import torchvision

        self.weights_url: str = getattr(torchvision.models, _LPIPS_BACKBONES[net_type]).DEFAULT.url
        message = _missing_weights(self.weights_url, f"LPIPS ({net_type})")
        if message is not None:
            raise MetricUnavailable(message)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.net_type = net_type
        self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=True)

    def to(self, device: Union[str, torch.device]) -> "LPIPS":
        """Move the network to ``device``; returns ``self``."""
        self.metric = self.metric.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.metric.device

    @torch.no_grad()
    def __call__(self, x: Tensor, gt: Tensor) -> Tensor:
        """LPIPS of each restored image against its ground truth.

        :param x: restored images ``(N, 3 or 1, H, W)`` in [0, 1] (grey images are repeated to 3 channels)
        :param gt: ground truth, same shape
        :return: ``(N,)`` float32, on the network's device
        """
        _check_pair(x, gt, "lpips")
        if x.shape[1] == 1:
            x, gt = x.expand(-1, 3, -1, -1), gt.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"lpips: expected 1- or 3-channel images, got {tuple(x.shape)}")
        x = to_8bit(x.to(self.device, torch.float32))
        gt = to_8bit(gt.to(self.device, torch.float32))
        # the module's forward only returns the batch mean; its network gives one value per image
        return self.metric.net(x, gt, normalize=True).reshape(x.shape[0])


class _FeatureModule(nn.Module):
    """A loaded feature extractor as torchmetrics' custom FID ``feature``: float ``(N, 3, H, W)`` -> ``(N, D)``."""

    def __init__(self, net: nn.Module, num_features: Optional[int] = None):
        super().__init__()
        self.net = net
        if num_features is not None:
            self.num_features = int(num_features)  # torchmetrics then skips its dummy forward

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.reshape(out.shape[0], -1)


class FID:
    """Dataset-level FID between the restored images and the ground truth (torchmetrics'
    ``FrechetInceptionDistance``), on the 8-bit images.

    :param feature_extractor: ``None`` for the standard Inception v3 of torch-fidelity (needs the ``torch-fidelity``
        package and its weights file ``weights-inception-2015-12-05-6726825d.pth`` in the torch hub cache), or the
        path of a TorchScript file of a module mapping a float batch ``(N, 3, H, W)`` in [0, 1] to features ``(N, D)``
    :param feature_dim: for the Inception, the feature layer (64, 192, 768 or 2048, default 2048); for a custom
        extractor, ``D`` if known (else torchmetrics infers it from one forward pass of a ``(1, 3, 299, 299)`` input)
    """

    def __init__(self, feature_extractor: Optional[str] = None, feature_dim: Optional[int] = None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.custom = feature_extractor is not None
        if feature_extractor is None:
            problems = []
            url = INCEPTION_WEIGHTS_URL
            if _torch_fidelity_available():
                try:  # the URL the installed torch-fidelity downloads from, hence the file name it looks for
                    from torch_fidelity import feature_extractor_inceptionv3 as fe

                    url = getattr(fe, "URL_INCEPTION_V3", url)
                except ImportError:
                    pass
            else:
                problems.append("the torch-fidelity package (pip install torch-fidelity)")
            if _missing_weights(url, "FID") is not None:
                name = os.path.basename(urlparse(url).path)
                problems.append(f"the Inception weights file {name} (download {url} into {_hub_checkpoints()}/, "
                                f"i.e. $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another cache)")
            if problems:
                raise MetricUnavailable("FID with the standard Inception needs " + " and ".join(problems))
            self.metric = FrechetInceptionDistance(feature=feature_dim or 2048, normalize=False)
        else:
            path = Path(feature_extractor)
            if not path.is_file():
                raise MetricUnavailable(f"FID feature extractor {path} does not exist (expected a TorchScript file)")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in recent torch
                    net = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:  # any load failure means the metric cannot run
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise MetricUnavailable(f"FID feature extractor {path} cannot be loaded as TorchScript: {first}") from e
            net.eval()
            self.metric = FrechetInceptionDistance(feature=_FeatureModule(net, feature_dim), normalize=True)

    def to(self, device: Union[str, torch.device]) -> "FID":
        """Move the feature extractor and the accumulated statistics to ``device``; returns ``self``."""
        self.metric = self.metric.to(device)
        return self

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.to(self.metric.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.custom:
            return to_8bit(x.float())
        # the Inception takes uint8; rounding here avoids torchmetrics' truncating (x * 255).byte()
        return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)

    @torch.no_grad()
    def update(self, x: Tensor, gt: Tensor) -> None:
        """Accumulate a batch.

        :param x: restored images ``(N, 3 or 1, H, W)`` in [0, 1]
        :param gt: the ground truth, in [0, 1] (any batch size)
        """
        self.metric.update(self._prepare(gt), real=True)
        self.metric.update(self._prepare(x), real=False)

    def compute(self) -> float:
        """FID over everything accumulated since the last :meth:`reset` (synchronised across processes under DDP).

        Needs at least two images on each side (torchmetrics raises ``RuntimeError`` otherwise).
        """
        return float(self.metric.compute())

    def reset(self) -> None:
        """Forget the accumulated images."""
        self.metric.reset()


class ImageMetrics:
    """The metrics a run asks for, by name: ``'psnr'``, ``'ssim'``, ``'lpips'``, ``'fid'`` need ground truth;
    ``'consistency'`` (needs ``ax`` and ``y``) and ``'loe'`` (needs the low-light input ``y``) do not.

    LPIPS and FID are built here, so a missing weights file raises :class:`MetricUnavailable` at start-up.

    :param names: metric names, from :data:`METRIC_NAMES`
    :param lpips_net: the LPIPS backbone
    :param fid_feature_extractor: ``None`` for the standard Inception, else a TorchScript file (see :class:`FID`)
    :param groups: the sets of images that get one FID each, by suffix (a scale sweep: ``["/s500", "/s2000"]``,
        reported as ``fid/s500``, ``fid/s2000``); default one set, ``fid``
    """

    def __init__(self, names: Sequence[str], lpips_net: str = "alex", fid_feature_extractor: Optional[str] = None,
                 groups: Sequence[str] = ("",)):
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known metrics: {', '.join(METRIC_NAMES)}")
        self.names = tuple(dict.fromkeys(names))
        self.groups = tuple(dict.fromkeys(groups)) or ("",)
        self.lpips = LPIPS(lpips_net) if "lpips" in self.names else None
        self.fids: Dict[str, FID] = {}
        if "fid" in self.names:
            self.fids[self.groups[0]] = FID(fid_feature_extractor)
            for group in self.groups[1:]:  # the same network, separate statistics
                self.fids[group] = copy.deepcopy(self.fids[self.groups[0]])
        self._fid_seen = {group: 0 for group in self.fids}

    @property
    def fid(self) -> Optional[FID]:
        """The FID of the first group (the only one without a sweep)."""
        return self.fids.get(self.groups[0])

    def to(self, device: Union[str, torch.device]) -> "ImageMetrics":
        """Move the networks to ``device``; returns ``self``."""
        if self.lpips is not None:
            self.lpips.to(device)
        for fid in self.fids.values():
            fid.to(device)
        return self

    def per_image(
        self,
        x: Tensor,
        *,
        gt: Optional[Tensor] = None,
        ax: Optional[Tensor] = None,
        y: Optional[Tensor] = None,
        low: Optional[Tensor] = None,
        group: Optional[str] = None,
    ) -> Dict[str, Tensor]:
        """The per-image metrics whose inputs are given (the others are skipped); also feeds FID with ``(x, gt)``.

        :param x: restored images ``(N, C, H, W)`` in [0, 1]
        :param gt: ground truth, same shape
        :param ax: ``A(x̂)``, for the consistency
        :param y: the observation, for the consistency
        :param low: the low-light input of the same size as ``x``, for the LOE (default: ``y`` when it has ``x``'s
            shape)
        :param group: which FID the images feed (one of ``groups``; default the first)
        :return: name -> ``(N,)`` float64 on the CPU, in the order of ``names``
        """
        out: Dict[str, Tensor] = {}
        for name in self.names:
            if name in _NEED_GT and gt is None:
                continue
            if name == "psnr":
                value = psnr(x, gt)
            elif name == "ssim":
                value = ssim(x, gt)
            elif name == "lpips":
                value = self.lpips(x, gt)
            elif name == "consistency":
                if ax is None or y is None:
                    continue
                value = consistency(ax, y)
            elif name == "loe":
                reference = low if low is not None else (y if y is not None and y.shape == x.shape else None)
                if reference is None:
                    continue
                value = lightness_order_error(x, reference)
            else:  # fid: dataset-level
                group = self.groups[0] if group is None else group
                self.fids[group].update(x, gt)
                self._fid_seen[group] += x.shape[0]
                continue
            out[name] = value.detach().to("cpu", torch.float64)
        return out

    def dataset(self, synchronize: bool = False) -> Dict[str, float]:
        """The dataset-level metrics (``fid``) over the images since the last :meth:`reset`; empty when none was
        asked for or no ground truth was seen, NaN for FID over fewer than two images.

        :param synchronize: compute even if this process saw no ground truth (under DDP every process must
            join the synchronisation inside ``compute()``, also one that got no images)."""
        out: Dict[str, float] = {}
        for group, fid in self.fids.items():  # the same order on every process
            if self._fid_seen[group] == 0 and not synchronize:
                continue
            try:  # compute() synchronises the processes under DDP, so every process must call it
                out[f"fid{group}"] = fid.compute()
            except RuntimeError as e:
                if "More than one sample" not in str(e):
                    raise
                out[f"fid{group}"] = float("nan")
        return out

    def reset(self) -> None:
        """Forget the dataset-level accumulations."""
        for fid in self.fids.values():
            fid.reset()
        self._fid_seen = {group: 0 for group in self.fids}
