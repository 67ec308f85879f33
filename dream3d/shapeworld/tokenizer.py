"""A CLIP tokenizer whose vocabulary is the shape world's captions: every caption word is one token.

CLIP's tokenizer splits text into words (lowercased; letters, digits and punctuation runs), spells each word
as characters with ``</w>`` on its last one, and applies BPE merges in rank order. The merges written here
are learned the usual BPE way (repeatedly merge the most frequent adjacent pair) on the caption words only,
until each of them is a single symbol, so every caption word comes back as one token. The vocabulary also
holds CLIP's 256 byte stand-ins with and without ``</w>`` and every intermediate merge result, so any other
text still tokenizes to known tokens (character pieces), never to the unknown token.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from dream3d.shapeworld.catalogue import VIEW_SUFFIXES, catalogue

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END = "</w>"
_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokenizer, for the ASCII captions used here


def byte_vocab() -> list[str]:
    """The 256 printable stand-ins that CLIP's byte-level BPE starts from."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def caption_words(captions: Iterable[str] | None = None) -> Counter:
    """Word counts of ``captions`` (default: every catalogue caption with every view suffix), CLIP-style split."""
    counts: Counter = Counter()
    for text in default_captions() if captions is None else captions:
        counts.update(_WORD_RE.findall(text.lower()))
    return counts


def learn_merges(words: Counter) -> list[tuple[str, str]]:
    """BPE merges that rebuild every word of ``words`` (word -> count) into one symbol, in rank order.

    Each step merges the most frequent adjacent pair over the words still in several pieces (ties broken
    alphabetically, so the result is deterministic). Words are spelled CLIP's way: characters, the last with
    ``</w>``.
    """
    pieces = {w: [*w[:-1], w[-1] + END] for w in sorted(words)}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, sym in pieces.items():
            for pair in zip(sym[:-1], sym[1:]):
                pairs[pair] += words[w]
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, sym in pieces.items():
            pieces[w] = _apply(sym, best)


def _apply(symbols: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """Merge every occurrence of ``pair`` in ``symbols``, left to right."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP layout: 256 byte stand-ins, the same with ``</w>``, each merge result, then BOS and EOS."""
    chars = byte_vocab()
    tokens = chars + [c + END for c in chars]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer(folder: str | Path, captions: Iterable[str] | None = None, max_length: int = 16):
    """Write vocab.json + merges.txt for ``captions`` and save a ``CLIPTokenizer`` in ``folder``; return it.

    ``max_length`` becomes ``model_max_length``: the length prompts are padded/truncated to (BOS and EOS
    included) by the pipeline and :meth:`dream3d.prior.Prior.encode_text`. The longest caption needs 8.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = default_captions() if captions is None else list(captions)
    words = caption_words(captions)
    longest = max(len(_WORD_RE.findall(c.lower())) for c in captions) + 2
    if longest > max_length:
        raise ValueError(f"max_length {max_length} is shorter than the longest caption ({longest} tokens)")
    merges = learn_merges(words)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return tok


def default_captions() -> list[str]:
    """Every catalogue caption with every view suffix ("a red cube, front view", ...)."""
    return [f"{o.caption}, {suffix}" for o in catalogue() for suffix in VIEW_SUFFIXES.values()]
