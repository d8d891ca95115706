"""Evaluation metrics of §4.2 (and supplement Table 1): motion, consistency, fidelity.

- **Motion.** `lmse` / `expressive_lmse`: MSE between corresponding MediaPipe face-mesh points (478 XYZ) of the
  generated and the driving video, over all points or the expressive ones (eyes, irises, brows, lips).
- **Consistency.** `csim`: minimum cosine similarity between the source's and the generated frames' global
  embeddings (CLIP in the paper; any `GlobalEncoder` here). `self_csim`: |min pairwise cosine within the
  generated video - min pairwise cosine within the driving video|. For the consistency-vs-length study (Fig. 5)
  also `first_frame_csim` and the landmark-free `appearance_drift`.
- **Fidelity.** `frechet_distance` over Inception pool features (FID) and I3D features (FVD); the networks are
  the standard TorchScript files supplied by the user (`InceptionFeatures`, `I3DFeatures`). `psnr` / `ssim` for
  self-reenactment, where the driving frames are the ground truth.

**LMSE unit.** Landmarks are MediaPipe's normalised coordinates of the face crop (docs/design.md). We scale them by
`LMSE_CROP_PX` = 256, i.e. express them in pixels of a 256-px crop (the paper's resolution; z uses the same
factor, as MediaPipe's z is roughly in units of x), and report the mean over frames and points of the *squared
Euclidean distance* between corresponding points: a displacement d (in pixels) of every point gives LMSE = |d|^2.
On this scale a 3-px error gives ~9, the order of the paper's 9.6 (the paper does not state its unit).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from anchorface.frozen.codecs import to_pixels
from anchorface.errors import AnchorfaceError, MissingWeightsError

LMSE_CROP_PX = 256.0  # landmarks are scaled to pixels of a 256-px crop before the squared error
FRECHET_EPS = 1e-6  # offset added to both covariances' diagonals when their product is (near) singular
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_SIZE = 299  # input resolution of the TF-ported Inception-v3
INCEPTION_DIM = 2048  # pool3 features
I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_SIZE = 224  # input resolution of the Kinetics-400 I3D
I3D_DIM = 400  # StyleGAN-V / VideoGPT FVD use the 400 logits before the softmax as "features"
I3D_MIN_FRAMES = 10  # I3D's temporal receptive field; shorter clips are mirror-padded (`pad_frames`)


# ----------------------------------------------------------------------------------------------------------------
# Motion (§4.2 "Motion"): LMSE and Expressive-LMSE


def lmse(gen_lmk, drv_lmk, indices=None, valid=None) -> float:
    """Landmark MSE (§4.2): mean over frames and points of |p_gen - p_drv|^2, in pixels^2 of a 256-px crop.

    gen_lmk, drv_lmk: [N, 478, 3] normalised crop coordinates; indices: the points to compare (None = all);
    valid: [N] bool, frames to include (frames without a face in the generated video are excluded).
    Returns nan when no frame is valid.
    """
    gen, drv = np.asarray(gen_lmk, np.float64), np.asarray(drv_lmk, np.float64)
    if gen.shape != drv.shape or gen.ndim != 3 or gen.shape[-1] != 3:
        raise AnchorfaceError(f"lmse: expected two [N, P, 3] landmark arrays of one shape, got {gen.shape} and "
                              f"{drv.shape}")
    if indices is not None:
        gen, drv = gen[:, indices], drv[:, indices]
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (gen.shape[0],):
            raise AnchorfaceError(f"lmse: valid mask must be [{gen.shape[0]}], got {valid.shape}")
        gen, drv = gen[valid], drv[valid]
    if gen.shape[0] == 0 or gen.shape[1] == 0:
        return float("nan")
    sq = ((gen - drv) * LMSE_CROP_PX) ** 2
    return float(sq.sum(-1).mean())


def expressive_lmse(gen_lmk, drv_lmk, valid=None) -> float:
    """Expressive-LMSE (§4.2): `lmse` on `landmarks.EXPRESSIVE_INDICES` (eyes, irises, brows, lips)."""
    from anchorface.faces.landmarks import EXPRESSIVE_INDICES

    return lmse(gen_lmk, drv_lmk, indices=EXPRESSIVE_INDICES, valid=valid)


def motion_metrics(gen_lmk, gen_found, drv_lmk, drv_found=None) -> dict[str, float]:
    """LMSE, E-LMSE and the face-found rate of the generated video. Frames without a face in the generated video
    (or, when `drv_found` is given, in the driving video) are excluded from LMSE / E-LMSE."""
    found = np.asarray(gen_found, bool)
    valid = found if drv_found is None else found & np.asarray(drv_found, bool)
    return {"lmse": lmse(gen_lmk, drv_lmk, valid=valid), "e_lmse": expressive_lmse(gen_lmk, drv_lmk, valid=valid),
            "face_found_rate": float(found.mean()) if found.size else float("nan")}


# ----------------------------------------------------------------------------------------------------------------
# Consistency (§4.2 "Consistency"): CSIM and Self-CSIM over global embeddings


def _unit(x) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise AnchorfaceError("cosine similarity of a zero embedding is undefined")
    return x / n


def cosine_matrix(a, b) -> np.ndarray:
    """Cosine similarities [Na, Nb] between two sets of embeddings [Na, D], [Nb, D]."""
    return _unit(a) @ _unit(b).T


def csim(source_emb, gen_embs) -> float:
    """CSIM (§4.2): minimum cosine similarity between the source embedding [D] and the generated frames' [N, D]."""
    return float(cosine_matrix(np.atleast_2d(source_emb), gen_embs).min())


def min_pairwise_cosine(embs) -> float:
    """Minimum cosine similarity over all pairs of frames of one video [N, D] (1 for a single frame)."""
    return float(cosine_matrix(embs, embs).min())


def self_csim(gen_embs, drv_embs) -> float:
    """Self-CSIM (§4.2): |min pairwise cosine within the generated video - that within the driving video|."""
    return abs(min_pairwise_cosine(gen_embs) - min_pairwise_cosine(drv_embs))


def first_frame_csim(gen_embs) -> float:
    """Consistency over time (Fig. 5 study): min cosine similarity between the first frame and every later one."""
    e = np.asarray(gen_embs)
    return 1.0 if len(e) < 2 else float(cosine_matrix(e[:1], e[1:]).min())


def drift_to(embs, index: int, metric: str = "cosine") -> tuple[float, float]:
    """Identity drift (Fig. 5 study): the distance of every other frame's embedding [N, D] to that of frame
    `index` (the first frame, or the anchor), as (mean, max). `metric`: "cosine" (1 - cosine similarity, for CLIP
    and the learned encoder) or "euclidean" (the face-recognition embedding, whose same-person threshold is 0.6)."""
    e = np.asarray(embs, np.float64)
    if len(e) < 2:
        return 0.0, 0.0
    others = np.delete(np.arange(len(e)), index)
    if metric == "cosine":
        d = 1.0 - cosine_matrix(e[index:index + 1], e[others])[0]
    elif metric == "euclidean":
        d = np.linalg.norm(e[others] - e[index], axis=-1)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return float(d.mean()), float(d.max())


BACKGROUND_GRID = 16  # background drift compares 16x16 area-averaged cells
FACE_MARGIN = 0.1  # the face hull is grown by this fraction of the crop side before it is masked out


def face_mask(lmk, size: int, margin: float = FACE_MARGIN) -> np.ndarray:
    """bool [size, size]: inside the convex hull of the 478 landmarks ([478, 3], crop coordinates in [0, 1]),
    grown by `margin` of the crop side."""
    import cv2

    pts = np.asarray(lmk, np.float64)[:, :2] * size
    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    grow = int(round(margin * size))
    if grow:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return mask.astype(bool)


def background_drift(frames, lmk, grid: int = BACKGROUND_GRID) -> float:
    """Appearance drift outside the face (Fig. 4's changing outfit; Fig. 5 study): frames [N, H, W, 3] and the
    landmarks they follow [N, 478, 3] -> the mean absolute difference (0-255) between each later frame and the
    first over the `grid` x `grid` area-averaged cells that the (grown) face covers in neither frame: hair,
    clothes, background. NaN when no cell is free of the face."""
    import cv2

    f = _frames(frames)
    if len(f) < 2:
        return 0.0
    size = f.shape[1]
    small = np.stack([cv2.resize(x, (grid, grid), interpolation=cv2.INTER_AREA) for x in f]).astype(np.float64)
    covered = np.stack([cv2.resize(face_mask(m, size).astype(np.float32), (grid, grid),
                                   interpolation=cv2.INTER_AREA) > 0.01 for m in np.asarray(lmk)])
    diffs = []
    for i in range(1, len(f)):
        free = ~(covered[0] | covered[i])
        if free.any():
            diffs.append(np.abs(small[i] - small[0])[free].mean())
    return float(np.mean(diffs)) if diffs else float("nan")


APPEARANCE_DRIFT_SIZE = 8  # frames are area-averaged to 8x8 before comparison: colour/lighting/background, not pose


def appearance_drift(frames) -> float:
    """Landmark-free appearance drift (Fig. 5 study): mean absolute difference (0-255) between each later frame and
    the first, after area-averaging every frame to 8x8 so fine motion (mouth, eyes) barely counts while changes of
    colour, lighting, outfit or background do."""
    import cv2

    f = _frames(frames)
    if len(f) < 2:
        return 0.0
    small = np.stack([cv2.resize(x, (APPEARANCE_DRIFT_SIZE,) * 2, interpolation=cv2.INTER_AREA)
                      for x in f]).astype(np.float64)
    return float(np.abs(small[1:] - small[:1]).mean())


@torch.no_grad()
def embed_frames(encoder, frames: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Global embeddings [N, dim] of uint8 RGB frames with a `GlobalEncoder` (`encode_images` takes [-1, 1]).

    Frames are resized to the encoder's `resolution` when it has one (the learned encoder); CLIP does its own
    preprocessing.
    """
    size = getattr(encoder, "resolution", None)
    param = next(iter(encoder.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    out = []
    for i in range(0, len(frames), batch_size):
        x = to_pixels(_frame_tensor(frames[i:i + batch_size])).to(device)
        if size and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(encoder.encode_images(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, getattr(encoder, "dim", 0)), np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Fidelity (§4.2 "Fidelity"): Fréchet distances, PSNR, SSIM


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, rows = samples) of features [N, D]; N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise AnchorfaceError(f"feature statistics need at least 2 feature vectors [N, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FRECHET_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID [Heusel et al.], FVD [Unterthiner et al.]):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    When the product is singular (few samples), `eps` is added to both diagonals. A square root whose diagonal
    keeps a non-negligible imaginary part (scipy's Schur method failing on a rank-deficient product, common with
    fewer samples than feature dimensions) is replaced by the equal symmetric form
    tr (sigma1^(1/2) sigma2 sigma1^(1/2))^(1/2), computed with eigendecompositions, and a warning.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise AnchorfaceError(f"frechet_distance: inconsistent shapes mu {mu1.shape}/{mu2.shape}, "
                              f"sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean, singular = _sqrtm(s1 @ s2)
    if singular or not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        s1, s2 = s1 + offset, s2 + offset
        covmean, _ = _sqrtm(s1 @ s2)
    tr_covmean = np.trace(covmean)
    scale = max(1.0, float(np.abs(tr_covmean.real)))
    if not np.isfinite(covmean).all() or abs(tr_covmean.imag) > 1e-6 * scale or \
            np.abs(np.diagonal(covmean).imag).max() > 1e-3 * scale:
        warnings.warn("frechet_distance: sqrtm was inaccurate (imaginary component); using the symmetric "
                      "eigendecomposition form", RuntimeWarning, stacklevel=2)
        tr_covmean = _trace_sqrt_product(s1, s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * float(np.real(tr_covmean)))


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (s1 s2)^(1/2) = tr (s1^(1/2) s2 s1^(1/2))^(1/2) for symmetric PSD s1, s2 (real by construction)."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's matrix square root, and whether scipy found the matrix singular or ill-conditioned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(a)
    return root, any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)


def fid_from_features(real, fake) -> float:
    """Fréchet distance between two feature sets [N, D] (FID with Inception, FVD with I3D features).

    With fewer samples than dimensions (a small evaluation: tens of frames, 2048-d Inception features) the
    covariances S1 = A^T A, S2 = B^T B (A, B: centred features / sqrt(N - 1)) have rank < D, and the trace term is
    computed exactly in the samples' span: tr (S1 S2)^(1/2) = nuclear norm of A B^T, an [N1, N2] matrix (the
    non-zero eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T). That is O(N^2 D) instead of the O(D^3) of
    `frechet_distance`, with no eps offset; otherwise `frechet_distance(*feature_statistics(...))`.
    """
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise AnchorfaceError(f"feature sets must be [N, D] with one D, got {r.shape} and {f.shape}")
    if min(len(r), len(f)) < 2:
        raise AnchorfaceError(f"feature statistics need at least 2 feature vectors [N, D], got {len(r)} and "
                              f"{len(f)}")
    if max(len(r), len(f)) >= r.shape[1]:
        return frechet_distance(*feature_statistics(r), *feature_statistics(f))
    a = (r - r.mean(0)) / np.sqrt(len(r) - 1)
    b = (f - f.mean(0)) / np.sqrt(len(f) - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = r.mean(0) - f.mean(0)
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * nuclear)


def psnr(a, b) -> float:
    """PSNR in dB between uint8 frames (or stacks of frames) of one shape, averaged per frame; inf if identical."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _frames(a), _frames(b)
    vals = []
    for x, y in zip(a, b):
        mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
        vals.append(np.inf if mse == 0 else peak_signal_noise_ratio(x, y, data_range=255))
    return float(np.mean(vals))


def ssim(a, b) -> float:
    """SSIM (skimage, RGB with channel_axis, data_range 255) between uint8 frames, averaged per frame."""
    from skimage.metrics import structural_similarity

    a, b = _frames(a), _frames(b)
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]))


def _frames(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise AnchorfaceError(f"expected uint8 frames [H, W, 3] or [N, H, W, 3], got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------------------------------------------
# Feature networks for FID / FVD (user-provided TorchScript files; nothing is downloaded)


def _frame_tensor(frames) -> torch.Tensor:
    """uint8 RGB frames [N, H, W, 3] (array, tensor or list of frames) as one tensor, shape checked."""
    if isinstance(frames, torch.Tensor):
        x = frames
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(list(frames)) if not isinstance(frames, np.ndarray)
                                                  else frames))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise AnchorfaceError(f"expected RGB frames [N, H, W, 3], got shape {tuple(x.shape)}")
    return x


def to_tensor(frames) -> torch.Tensor:
    """uint8 RGB frames [N, H, W, 3] (array or list) -> float tensor [N, 3, H, W] in [0, 255]."""
    return _frame_tensor(frames).permute(0, 3, 1, 2).float()


def _load_torchscript(path, what: str, file: str, url: str, device) -> torch.jit.ScriptModule:
    if path is None or not Path(path).is_file():
        raise MissingWeightsError(f"{what} weights not found at {path}: download {file} from {url} and pass its path")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception:  # noqa: BLE001 - any load failure is a bad weights file for the user
        hint = " (pt_inception-*.pth is pytorch-fid's state dict, not TorchScript)" \
            if Path(path).name.startswith("pt_inception") else ""
        raise MissingWeightsError(f"{what} weights at {path} are not a TorchScript file{hint}; download {file} "
                                  f"from {url}") from None


class InceptionFeatures:
    """Inception-v3 pool features (2048-d) for FID, from StyleGAN2-ADA's TorchScript `inception-2015-12-05.pt`.

    Calling convention of that file (as StyleGAN2-ADA's metric code uses it): `net(images, return_features=True)`
    with uint8 images [N, 3, H, W] in [0, 255]; we resize to 299x299 first (bilinear, antialiased).
    """

    def __init__(self, path, device="cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = _load_torchscript(path, "Inception (FID)", INCEPTION_FILE, INCEPTION_URL, self.device)

    @torch.no_grad()
    def __call__(self, frames) -> np.ndarray:
        """uint8 RGB frames [N, H, W, 3] -> features [N, 2048] (float64)."""
        frames = np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = to_tensor(frames[i:i + self.batch_size]).to(self.device)
            if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
                x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
            out.append(self.net(x, return_features=True).double().cpu().numpy().reshape(x.shape[0], -1))
        return np.concatenate(out) if out else np.zeros((0, INCEPTION_DIM))


def pad_frames(video: np.ndarray, min_frames: int) -> np.ndarray:
    """Mirror-pad a clip [T, ...] in time (0 1 .. T-1 T-2 .. 1 0 1 ..) to at least `min_frames` frames."""
    t = len(video)
    if t >= min_frames or t == 0:
        return video
    cycle = list(range(t)) + list(range(t - 2, 0, -1)) or [0]
    idx = [cycle[i % len(cycle)] for i in range(min_frames)]
    return video[idx]


class I3DFeatures:
    """Kinetics-400 I3D features for FVD, from the StyleGAN-V / VideoGPT TorchScript `i3d_torchscript.pt`.

    Calling convention of that file: `net(videos, rescale=False, resize=False, return_features=True)` with float
    videos [B, 3, T, 224, 224] in [-1, 1] -> [B, 400] (the logits before the softmax, as in StyleGAN-V's FVD).
    Frames are resized to 224x224 here; clips shorter than `I3D_MIN_FRAMES` (10) are mirror-padded in time.
    """

    def __init__(self, path, device="cpu", batch_size: int = 4, min_frames: int = I3D_MIN_FRAMES):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.min_frames = min_frames
        self.net = _load_torchscript(path, "I3D (FVD)", I3D_FILE, I3D_URL, self.device)

    def _prepare(self, video) -> torch.Tensor:
        v = pad_frames(np.asarray(video), self.min_frames)
        x = to_pixels(_frame_tensor(v))  # [T, 3, H, W] in [-1, 1]
        if tuple(x.shape[-2:]) != (I3D_SIZE, I3D_SIZE):
            x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return x.permute(1, 0, 2, 3)  # [3, T, H, W]

    @torch.no_grad()
    def __call__(self, videos: Iterable) -> np.ndarray:
        """uint8 RGB clips [B, T, H, W, 3] (or a list of [T, H, W, 3] of one length) -> features [B, 400]."""
        videos = list(videos)
        out = []
        for i in range(0, len(videos), self.batch_size):
            x = torch.stack([self._prepare(v) for v in videos[i:i + self.batch_size]]).to(self.device)
            feats = self.net(x, rescale=False, resize=False, return_features=True)
            out.append(feats.double().cpu().numpy().reshape(x.shape[0], -1))
        return np.concatenate(out) if out else np.zeros((0, I3D_DIM))
