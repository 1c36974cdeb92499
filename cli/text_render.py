"""Tokens coloured by their scores: for a terminal (ANSI colours, or plain text), as HTML, as JSON.

Colours are a diverging red/blue scale (red: the token raises the explained output, blue: lowers it),
the ColorBrewer RdBu end points, whose two hues stay apart under the common colour-vision deficiencies;
the intensity is ``|score| / max |score|``. In HTML the text is white where the background is dark and
black elsewhere, so every token keeps a contrast of at least 4.5:1 (WCAG AA), and each token's score is
in its ``title`` and in a table (the colour is never the only carrier of the number).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

RED = (178, 24, 43)  # RdBu's ends: #b2182b, #2166ac
BLUE = (33, 102, 172)
WHITE = (255, 255, 255)
# white text on backgrounds darker than this relative luminance, black on lighter ones: either way the
# WCAG contrast ratio (L1 + 0.05) / (L2 + 0.05) is at least 4.5 (the two meet near L = 0.18)
WHITE_TEXT_BELOW = 0.179


def display_token(token: str) -> str:
    """A token as shown: control characters and non-printing bytes as escapes, spaces visible in context."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in token)


def intensities(scores: np.ndarray) -> np.ndarray:
    """``|score| / max |score|`` in [0, 1] (all zeros when every score is 0)."""
    largest = float(np.max(np.abs(scores))) if len(scores) else 0.0
    return np.abs(scores) / largest if largest > 0 else np.zeros(len(scores))


def _blend(score: float, intensity: float) -> tuple[int, int, int]:
    end = RED if score > 0 else BLUE
    return tuple(round(w + (e - w) * intensity) for w, e in zip(WHITE, end, strict=True))  # type: ignore[return-value]


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def white_text_on(rgb: tuple[int, int, int]) -> bool:
    return relative_luminance(rgb) < WHITE_TEXT_BELOW


def terminal(tokens: Sequence[str], scores: np.ndarray, *, color: bool) -> str:
    """The tokens on one line, coloured (24-bit ANSI backgrounds) or, without colour, each with its score."""
    level = intensities(scores)
    parts = []
    for token, score, strength in zip(tokens, scores, level, strict=True):
        shown = display_token(token)
        if not color:
            parts.append(f"{shown}({score:+.3g})")
            continue
        r, g, b = _blend(float(score), float(strength))
        text = "97" if white_text_on((r, g, b)) else "30"
        parts.append(f"\x1b[{text};48;2;{r};{g};{b}m{shown}\x1b[0m")
    return " ".join(parts)


def top_tokens(tokens: Sequence[str], scores: np.ndarray, count: int = 10) -> list[tuple[int, str, float]]:
    """The ``count`` tokens of largest ``|score|``: (position, token, score), largest first."""
    order = np.argsort(-np.abs(scores), kind="stable")[:count]
    return [(int(i), tokens[i], float(scores[i])) for i in order]


def to_html(tokens: Sequence[str], scores: np.ndarray, *, title: str, caption: str) -> str:
    """A standalone HTML page: the coloured tokens, a legend, and a table of every token's score."""
    level = intensities(scores)
    spans = []
    for token, score, strength in zip(tokens, scores, level, strict=True):
        r, g, b = _blend(float(score), float(strength))
        ink = "#ffffff" if white_text_on((r, g, b)) else "#000000"
        spans.append(f'<span class="t" style="background:rgb({r},{g},{b});color:{ink}" '
                     f'title="{float(score):+.4g}">{html.escape(display_token(token))}</span>')
    rows = "\n".join(f"<tr><td>{i}</td><td><code>{html.escape(display_token(t))}</code></td><td>{float(s):+.6g}</td>"
                     "</tr>" for i, (t, s) in enumerate(zip(tokens, scores, strict=True)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #111; background: #fff; max-width: 60em; margin: 2em auto;
       line-height: 2.2; }}
.t {{ padding: 0.15em 0.25em; border-radius: 0.2em; border: 1px solid #ccc; font-family: monospace; }}
.legend span {{ padding: 0.15em 0.5em; border-radius: 0.2em; margin-right: 0.5em; }}
table {{ border-collapse: collapse; line-height: 1.4; }} td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(caption)}</p>
<p class="legend"><span style="background:rgb{RED};color:#fff">raises the output</span>
<span style="background:rgb{BLUE};color:#fff">lowers it</span> (shade: |score| relative to the largest)</p>
<p>{' '.join(spans)}</p>
<details><summary>Scores</summary><table><tr><th>#</th><th>token</th><th>score</th></tr>
{rows}
</table></details>
</body></html>
"""


def to_json(tokens: Sequence[str], ids: Sequence[int], scores: np.ndarray, **details: Any) -> str:
    """The numbers: every token with its id and score, plus the run's ``details``."""
    entries = [{"position": i, "token": t, "id": int(d), "score": float(s)}
               for i, (t, d, s) in enumerate(zip(tokens, ids, scores, strict=True))]
    return json.dumps({**details, "tokens": entries}, indent=1) + "\n"
