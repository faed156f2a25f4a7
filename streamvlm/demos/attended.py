"""The moments the last answer looked at, as HTML: every one reachable, every caption whole.

Gradio's gallery cuts captions to one line and the old view showed only the newest
frames. Here each attended block is a *moment*: its pictures with the whole caption
under them (``0:12–0:14, from memory (disk)``). The newest ``MOMENTS_SHOWN`` are open;
the earlier ones sit above them in an expander that says how many, so nothing is
dropped. A moment older than the thumbnail ring says that its picture was not kept.
"""

from __future__ import annotations

import base64
from html import escape

from .panels import moment_caption, span_clock
from .state import RetrievedFrames

MOMENTS_SHOWN = 6  # moments open under the chat; the earlier ones behind "Show N earlier moments"

# Scoped to the component by Gradio (``gr.HTML(css_template=...)``). Captions wrap, never
# clip: no fixed height, no ellipsis, no overflow hidden.
CSS = """
.svlm-heading { margin: 0 0 6px 0; }
.svlm-grid { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0; }
.svlm-moment { margin: 0; width: 184px; }
.svlm-pictures { display: flex; flex-wrap: wrap; gap: 4px; }
.svlm-pictures img { width: 88px; height: auto; border-radius: 4px; display: block; }
.svlm-nopicture { width: 180px; height: 66px; border: 1px dashed #999; border-radius: 4px;
  display: flex; align-items: center; justify-content: center; font-size: 0.85em; color: #666; }
.svlm-moment figcaption { font-size: 0.85em; white-space: normal; overflow-wrap: anywhere;
  overflow: visible; margin-top: 3px; }
.svlm-more summary { cursor: pointer; }
"""

EMPTY = (
    "<p class='svlm-heading'>Ask a question: the moments of the video its answer looked at appear here.</p>"
)


def attended_html(retrieved: list[RetrievedFrames], pictures_kept: int) -> str:
    """The moments an answer attended (``DemoSession.retrieved``, oldest first) as HTML.

    ``pictures_kept`` is the thumbnail ring's capacity, named when a picture was evicted.
    """
    if not retrieved:
        return "<p class='svlm-heading'>The last answer looked at no video: nothing was in memory yet.</p>"
    count = len(retrieved)
    heading = (
        f"The last answer looked at {count} moment{'s' if count != 1 else ''} of the video, "
        f"{span_clock(retrieved[0].t_start, retrieved[-1].t_end)}:"
    )
    earlier, newest = retrieved[:-MOMENTS_SHOWN], retrieved[-MOMENTS_SHOWN:]
    parts = [f"<p class='svlm-heading'>{escape(heading)}</p>"]
    if earlier:
        summary = (
            f"Show {len(earlier)} earlier moment{'s' if len(earlier) != 1 else ''} "
            f"({span_clock(earlier[0].t_start, earlier[-1].t_end)})"
        )
        parts.append(
            f"<details class='svlm-more'><summary>{escape(summary)}</summary>"
            f"{_grid(earlier, pictures_kept)}</details>"
        )
    parts.append(_grid(newest, pictures_kept))
    return "".join(parts)


def _grid(moments: list[RetrievedFrames], pictures_kept: int) -> str:
    return "<div class='svlm-grid'>" + "".join(_moment(r, pictures_kept) for r in moments) + "</div>"


def _moment(r: RetrievedFrames, pictures_kept: int) -> str:
    caption = moment_caption(r)
    if r.pictures_lost:
        what = "its older frames' pictures were" if r.thumbnails else "its picture was"
        caption += f"; {what} not kept (the demo keeps pictures of the last {pictures_kept} frames)"
    if r.thumbnails:
        pictures = "".join(
            f"<img loading='lazy' alt='frame at {escape(span_clock(th.t, th.t))}' "
            f"src='data:image/jpeg;base64,{base64.b64encode(th.jpeg).decode()}'>"
            for th in r.thumbnails
        )
    else:
        pictures = "<div class='svlm-nopicture'>no picture kept</div>"
    return (
        f"<figure class='svlm-moment'><div class='svlm-pictures'>{pictures}</div>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )
