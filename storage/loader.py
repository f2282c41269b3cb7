"""The training loader: a webdataset pipeline over a release's shards that yields fresh symmetric
triplets every epoch.

shards (shuffled per epoch, the same order on every node)
  -> split by node (RANK / WORLD_SIZE, or torch.distributed) -> split by DataLoader worker
  -> samples (one identity each; member names checked) -> shuffle buffer
  -> triplets of the identity for this epoch (storage.releases.triplets, seeded by epoch)
  -> tensors at the chosen resolution

Each shard goes to exactly one (node, worker), so each identity is read exactly once per epoch.
Nothing damaged is trained on: a sample is checked whole before any triplet of it is yielded (its
json of the key's identity with the face ids the release's index lists, a png for each face and
none more, each crop's sha256 as the json records it, scores in [0, 1], its key not seen before in
the shard and one the release wrote there), and a shard that ends with fewer samples than the
release's manifest says is an error (a shard cut at a sample boundary is otherwise a valid tar), as
is a damaged tar. Errors name the shard and the sample key (`ShardError`); docs/releases.md.
Call `set_epoch(e)` before each epoch (as with a DistributedSampler; with `persistent_workers` the
workers keep the epoch they started with). Shard URLs may be local paths or anything webdataset's
`gopen` reads (`pipe:aws s3 cp s3://bucket/train-000000.tar -`, https://...): docs/scale.md.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.gopen import gopen

from storage.errors import StorageError
from storage.releases.paths import release_path
from storage.releases.shards import INDEX, shard_names, shard_paths
from storage.releases.triplets import Face, identity_triplets
from storage.schemas import CATEGORIES
from storage.tarstream import TruncatedTarError, UnsafeTarError, iter_samples

_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")


class ShardError(ValueError):
    """A shard or one of its samples is not as the release wrote it: named, never trained on."""


class UnsafeShardError(ShardError, UnsafeTarError):
    """A member name that would land outside the folder: both a ShardError and tarstream's own."""


def tar_samples(streams: Iterator[dict], expected: dict[str, int] | None = None,
                expected_faces: dict[str, dict[str, tuple[str, ...]]] | None = None) -> Iterator[dict]:
    """webdataset's opened shards ({url, stream}) -> samples {__key__, __url__, <ext>: bytes}.
    `expected`: samples per shard name (the manifest's), checked when each shard ends;
    `expected_faces`: per shard name, each sample key's face ids (the release's index.parquet): a
    key the release did not write in that shard (a shard swapped for another) is refused, and the
    ids travel with the sample as `__faces__` for `check_sample`. A sample key that comes back
    later in its shard (members out of order, a repeated key) is refused. Every error, a damaged
    tar included, is a ShardError naming the shard."""
    for source in streams:
        url = source["url"]
        name = _shard_name(url)
        seen: set[str] = set()
        keys = (expected_faces or {}).get(name)
        known = set(expected or {}) | set(expected_faces or {})
        if known and name not in known:  # else no check of the release would apply to it, silently
            source["stream"].close()
            raise ShardError(f"{url}: no shard of this release is named {name!r} (a shard URL must end in the "
                             "shard's file name, e.g. pipe:aws s3 cp s3://bucket/train-000000.tar -)")  # fmt: skip
        try:
            for key, members in iter_samples(source["stream"], name):
                if key in seen:
                    raise ShardError(f"{name}: sample {key} appears twice (members out of order or a repeated key)")
                if keys is not None and key not in keys:
                    raise ShardError(f"{name}: sample {key} is not one the release wrote in this shard (a shard "
                                     "replaced by another? `ffe release verify` names what changed)")  # fmt: skip
                seen.add(key)
                sample = {"__key__": key, "__url__": url, **{ext.lower(): data for ext, data in members.items()}}
                if keys is not None:
                    sample["__faces__"] = keys[key]
                yield sample
        except UnsafeTarError as err:
            raise UnsafeShardError(str(err)) from None
        except TruncatedTarError as err:
            raise ShardError(str(err)) from None
        except OSError as err:  # the stream itself: a pipe that failed, a file gone mid-read
            raise ShardError(f"{name}: cannot be read: {err}") from None
        finally:
            _close(source["stream"], name)
        written = expected.get(name) if expected else (len(keys) if keys is not None else None)
        if written is not None and len(seen) != written:
            missing = sorted(set(keys) - seen)[:3] if keys is not None else []
            raise ShardError(f"{name}: {len(seen)} samples where the release wrote {written}"
                             + (f" (missing: {', '.join(missing)})" if missing else "")
                             + " (a cut or damaged shard: `ffe release verify` names what changed)")  # fmt: skip


def _close(stream, name: str) -> None:
    """Close a shard's stream; a `pipe:` command that failed says so here (its exit status). While
    another error is on its way out, that one is the news."""
    try:
        stream.close()
    except OSError as err:
        if sys.exc_info()[0] is None:
            raise ShardError(f"{name}: its stream failed ({' '.join(str(err).split())[:300]})") from None


def _faces_by_shard(folder: Path, split: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """shards/index.parquet -> {shard name: {sample key: face ids}} of one split; a shard name that
    leaves the release folder is a StorageError naming it (`release_path`)."""
    import pyarrow.parquet as pq

    index = release_path(folder, f"shards/{INDEX}")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for row in pq.read_table(index, columns=["shard", "key", "split", "face_ids"]).to_pylist():
        if row["split"] == split:
            out.setdefault(row["shard"], {})[row["key"]] = tuple(row["face_ids"])
    for name in out:
        release_path(folder, name, listed_in=f"shards/{INDEX}", under="shards")
    return out


def _shard_name(url: str) -> str:
    """The shard's file name, also in a `pipe:` command (the word that names a .tar file: `pipe:aws
    s3 cp s3://b/train-000000.tar -`, `pipe:curl -s -L https://h/train-000000.tar`) or a URL with
    a query (`https://h/train-000000.tar?X-Amz-Signature=...`)."""
    from urllib.parse import urlsplit

    words = url.removeprefix("pipe:").split() if url.startswith("pipe:") else [url]
    for word in reversed(words):
        name = Path(urlsplit(word).path if "://" in word else word).name
        if name.endswith(".tar") or name.endswith(".tar.gz"):
            return name
    return Path(urlsplit(url).path if "://" in url else url).name


def open_shards(sources: Iterator[dict]) -> Iterator[dict]:
    """webdataset's `url_opener`, with every failure to open (a missing file, a folder, a URL that
    does not answer) a ShardError naming the shard."""
    for source in sources:
        url = source["url"]
        try:
            stream = gopen(url)
        except OSError as err:
            raise ShardError(f"{_shard_name(url)}: cannot be opened ({type(err).__name__}: {err})") from None
        yield {**source, "stream": stream}


def check_sample(sample: dict) -> dict:
    """The sample's json document, once it is whole: its identity is the sample key, every face
    has a member with the bytes the release recorded (sha256), scores in [0, 1] for all 12
    categories, no member that no face lists, and the face ids the release's index lists for the
    key (`__faces__`, when known). Else ShardError naming shard, key and what is wrong."""
    where = f"{_shard_name(sample.get('__url__', ''))}: sample {sample.get('__key__')}"
    members = {k for k in sample if not k.startswith("__")}
    if "json" not in sample:
        raise ShardError(f"{where}: no json member (members: {', '.join(sorted(members))})")
    try:
        doc = json.loads(sample["json"])
        faces = doc["faces"]
        identity, listed = doc["identity_id"], [(f["face_id"], f["member"].lower()) for f in faces]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ShardError(f"{where}: its json cannot be read ({type(err).__name__}: {err})") from None
    if identity != sample.get("__key__", identity).rsplit("/", 1)[-1]:
        raise ShardError(f"{where}: its json is of identity {identity}")
    if "__faces__" in sample and sorted(f for f, _ in listed) != sorted(sample["__faces__"]):
        raise ShardError(f"{where}: its json lists faces {sorted(f for f, _ in listed)}, the release's index "
                         f"{sorted(sample['__faces__'])}")  # fmt: skip
    if extra := members - {"json"} - {m for _, m in listed}:
        raise ShardError(f"{where}: members no face lists: {', '.join(sorted(extra))}")
    for face, (face_id, member) in zip(faces, listed, strict=True):
        data = sample.get(member)
        if data is None:
            raise ShardError(f"{where}: face {face_id} has no member {face['member']}")
        _check_face(where, face)
        if hashlib.sha256(data).hexdigest() != face["crop_sha256"]:
            raise ShardError(f"{where}: face {face_id}: the crop's sha256 is not the one the release "
                             "recorded (damaged bytes)")  # fmt: skip
    return doc


def _score(value) -> bool:
    """A number in [0, 1] (not a bool, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _check_face(where: str, face: dict) -> None:
    """Every field the triplets use, as the release writes it; ShardError naming the field."""
    face_id = face.get("face_id")
    if not isinstance(face_id, str) or not face_id:
        raise ShardError(f"{where}: a face has face_id {face_id!r}")
    scores = face.get("scores")
    if not isinstance(scores, dict):
        bad = "no scores"
    elif extra := sorted(set(scores) - set(CATEGORIES)):
        bad = f"unknown categories in scores: {', '.join(map(str, extra))}"
    else:
        bad = next((f"{c}={scores.get(c)!r}" for c in CATEGORIES if not _score(scores.get(c))), None)
    if bad:
        raise ShardError(f"{where}: face {face_id}: {bad} (scores are in [0, 1] for each of the 12 categories)")
    problems = []
    if "category" not in face or face["category"] not in (None, *CATEGORIES):  # None: no category of its own
        problems.append(f"category {face.get('category', '(missing)')!r}")
    if not _score(face.get("intensity")):
        problems.append(f"intensity {face.get('intensity', '(missing)')!r}")
    b = face.get("intensity_bin", "(missing)")
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        problems.append(f"intensity_bin {b!r}")
    digest = face.get("crop_sha256")
    if not (isinstance(digest, str) and len(digest) == 64):
        problems.append(f"crop_sha256 {digest!r} (the release records each crop's)")
    if problems:
        raise ShardError(f"{where}: face {face_id}: {', '.join(problems)}")


def faces_of_sample(doc: dict) -> list[Face]:
    return [Face(f["face_id"], f["member"], f["scores"], f["category"], f["intensity"], f["intensity_bin"])
            for f in doc["faces"]]  # fmt: skip


def image_to_tensor(im: Image.Image | np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """An image (or HWC uint8 RGB array) -> float32 CHW tensor scaled to `value_range` ([-1, 1]:
    what diffusers' VAEs take)."""
    arr = im if isinstance(im, np.ndarray) else np.array(im.convert("RGB"))  # writable, as torch wants
    lo, hi = value_range
    chw = torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # bytes move once, before the float copy
    return chw.to(torch.float32).mul_((hi - lo) / 255.0).add_(lo)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    """A CHW tensor in [-1, 1] -> an RGB image (the inverse of `image_to_tensor`)."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


_PNG = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _cv2():
    import cv2

    return cv2


def _rgb8_png(data: bytes, resolution: int) -> np.ndarray | None:
    """An 8-bit RGB PNG of `resolution` px (what releases hold) decoded by libpng through OpenCV:
    the same pixels as Pillow in about 3/4 of the time (benches/shards.py). None for anything else."""
    # IHDR: width, height at bytes 16-24, then bit depth 8 and colour type 2 (RGB, no alpha)
    if data[:8] != _PNG or data[24:26] != b"\x08\x02" or data[16:24] != resolution.to_bytes(4, "big") * 2:
        return None
    cv2 = _cv2()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, resolution: int, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """PNG/JPEG bytes -> float32 CHW tensor of `resolution` px, scaled to `value_range`. OSError
    when the bytes are not an image Pillow can read."""
    if (rgb := _rgb8_png(data, resolution)) is not None:
        return image_to_tensor(rgb, value_range)
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        return image_to_tensor(im, value_range)


def _scores(face: Face) -> torch.Tensor:
    return torch.tensor([face.scores[c] for c in CATEGORIES], dtype=torch.float32)


class TripletStream(torch.utils.data.IterableDataset):
    """Triplets from WebDataset shards: dicts with `source`, `target_a`, `target_b` (tensors, or the
    encoded bytes when `decode=False`; triplets of one identity share the tensor of a face they
    have in common, so copy before changing one in place), `category_a/b`, `alpha_a/b` (each target's score in its own
    category: the interpolation weight), `scores_a/b` (all 12), `identity_id` and `face_ids`."""

    def __init__(
        self,
        shards: Sequence[str],
        pairs: Sequence[Sequence[str]],
        *,
        resolution: int = 512,
        shuffle_buffer: int = 16,  # identities (a few MB each); shards are shuffled per epoch too
        seed: int = 0,
        max_per_pair: int = 4,
        decode: bool = True,
        value_range: tuple[float, float] = (-1.0, 1.0),
        expected_samples: dict[str, int] | None = None,
        expected_faces: dict[str, dict[str, tuple[str, ...]]] | None = None,
        verify: bool = True,
    ):
        """`expected_samples`: samples per shard file name (`from_release` takes them from the
        manifest); `expected_faces`: per shard file name, each sample key's face ids (`from_release`
        takes them from shards/index.parquet when the folder has it); `verify`: check each sample and
        crop hash before using it (see the module doc)."""
        super().__init__()
        self.shards = list(shards)
        if not self.shards:
            raise ValueError("no shards to read (a release split with no faces, or a wrong path?)")
        self.pairs = [tuple(p) for p in pairs]
        self.resolution, self.shuffle_buffer, self.seed = resolution, shuffle_buffer, seed
        self.max_per_pair, self.decode, self.value_range = max_per_pair, decode, value_range
        self.expected_samples, self.expected_faces, self.verify = expected_samples, expected_faces, verify
        self.epoch = 0

    @classmethod
    def from_release(
        cls, folder: str | Path, split: str = "train", *, shard_url: str | None = None, **kw
    ) -> TripletStream:
        """The shards and pairs of a release (its manifest.json says which). `shard_url` reads the
        shards from elsewhere: a template with {version} and {name}, e.g.
        "pipe:aws s3 cp s3://bucket/ffe/{version}/shards/{name} -"; `folder` then needs only the
        manifest. A shard name of the manifest or of shards/index.parquet that leaves the release
        folder (absolute, `..`, a link out) is a StorageError naming the release and the entry,
        raised before any shard is read."""
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        if not manifest.get("complete"):
            raise ValueError(f"release {folder.name} has no finished shards yet")
        pairs = manifest["pairs"]["configured"] + manifest["pairs"]["found"]
        kw.setdefault("seed", manifest["config"]["triplet_seed"])
        kw.setdefault("max_per_pair", manifest["config"]["max_triplets_per_pair"])
        # Every shard name is checked before anything is read: one that leaves the release folder
        # (absolute, `..`, a link out) is a StorageError naming the release and the entry.
        urls = shard_paths(folder, manifest, split)
        if shard_url is not None:
            names = shard_names(manifest, split)
            # A `pipe:` URL runs in a shell: a name is pasted into it only when it is a plain file name.
            if odd := [n for n in names if not _PLAIN_NAME.fullmatch(n)]:
                raise StorageError(f"manifest.json of release {folder.name} names shard {odd[0]!r}: only letters, "
                                   "digits and ._- are put into a shard_url")  # fmt: skip
            urls = [shard_url.format(version=manifest["version"], name=n) for n in names]
        kw.setdefault("expected_samples", {r["name"]: r["samples"] for r in manifest["shards"].get(split, [])})
        if (folder / "shards" / INDEX).exists():
            kw.setdefault("expected_faces", _faces_by_shard(folder, split))
        return cls(urls, pairs, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard_order(self) -> list[str]:
        urls = list(self.shards)
        random.Random(f"{self.seed}:{self.epoch}:shards").shuffle(urls)  # same on every node
        return urls

    def _triplets(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            yield from self._sample_triplets(sample)

    def _sample_triplets(self, sample: dict) -> Iterator[dict]:
        doc = check_sample(sample) if self.verify else json.loads(sample["json"])
        images: dict[str, torch.Tensor | bytes] = {}

        def image(member: str) -> torch.Tensor | bytes:
            """Each face decoded once per sample: the source is in every triplet of its identity."""
            if member not in images:
                data = sample[member.lower()]
                try:
                    images[member] = decode_image(data, self.resolution, self.value_range) if self.decode else data
                except OSError as err:
                    where = f"{_shard_name(sample['__url__'])}: sample {sample['__key__']}"
                    raise ShardError(f"{where}: {member} cannot be decoded: {err}") from None
            return images[member]

        for t in identity_triplets(doc["identity_id"], faces_of_sample(doc), self.pairs,
                                   max_per_pair=self.max_per_pair, seed=f"{self.seed}:{self.epoch}"):  # fmt: skip
            yield {
                "__key__": f"{t.identity_id}/{t.target_a.face_id}/{t.target_b.face_id}",
                "identity_id": t.identity_id,
                "face_ids": [t.source.face_id, t.target_a.face_id, t.target_b.face_id],
                "source": image(t.source.image),
                "target_a": image(t.target_a.image),
                "target_b": image(t.target_b.image),
                "category_a": t.target_a.category,
                "category_b": t.target_b.category,
                "alpha_a": float(t.target_a.scores[t.target_a.category]),
                "alpha_b": float(t.target_b.scores[t.target_b.category]),
                "scores_a": _scores(t.target_a),
                "scores_b": _scores(t.target_b),
            }

    def pipeline(self) -> wds.DataPipeline:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}:{self.epoch}:{rank}:{worker}")
        stages = [
            wds.SimpleShardList(self._shard_order()),
            wds.split_by_node,
            wds.split_by_worker,
            open_shards,  # gopen: local paths, pipe:, http(s)
            functools.partial(tar_samples, expected=self.expected_samples, expected_faces=self.expected_faces),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 16), rng=rng),
            self._triplets,
        ]
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.pipeline())
