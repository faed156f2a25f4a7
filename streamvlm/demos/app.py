"""The Gradio live demo: a webcam or a video file streamed into a session, a chat over it.

``build_demo(engine)`` returns the ``gr.Blocks``; ``mount_demo(app, engine)`` puts it
under a path of a FastAPI app (e.g. the server's, at ``/demo``). Each browser tab has
its own session (``DemoSessions``, keyed by Gradio's session hash); the handlers here
only translate between Gradio values and ``DemoSession`` calls. See ``docs/demo.md``.
"""

from __future__ import annotations

import contextlib
import logging

import gradio as gr

from ..config import MemoryConfig
from ..errors import ConfigError, StreamVLMError
from .attended import CSS, EMPTY, attended_html
from .panels import (
    answer_note,
    clock,
    memory_details_markdown,
    memory_markdown,
    model_markdown,
    waiting_note,
)
from .state import DemoSessions, video_frames

log = logging.getLogger("streamvlm.demo")

DEFAULT_FPS = 2.0
DEFAULT_MAX_NEW_TOKENS = 64
PANEL_REFRESH_S = 1.0


def build_demo(
    engine,
    memory: MemoryConfig | None = None,
    *,
    sessions: DemoSessions | None = None,
    fps: float = DEFAULT_FPS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> gr.Blocks:
    """The demo's Gradio app over ``engine`` (a loaded ``StreamVLM``).

    ``memory`` configures every tab's session (ignored when ``sessions`` is given: pass
    a ``DemoSessions`` to choose its limits or to look at the sessions from outside).
    ``fps`` is the rate at which webcam frames are sent and video files are sampled;
    ``max_new_tokens`` the default answer length.
    """
    if not fps > 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    sessions = sessions if sessions is not None else DemoSessions(engine, memory)
    handlers = _Handlers(sessions, fps)

    with gr.Blocks(title="streamvlm live demo", analytics_enabled=False) as demo:
        gr.Markdown("## streamvlm — ask about anything the video has shown")
        gr.Markdown(model_markdown(engine.model_name), elem_id="streamvlm-model")
        gr.Markdown(
            f"Start the webcam or play a video file: the model watches it at {fps:g} frames a "
            "second. Ask at any time: an answer covers everything sent before the question."
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Webcam"):
                    webcam = gr.Image(
                        sources=["webcam"],
                        streaming=True,
                        type="numpy",
                        label="Webcam",
                        elem_id="streamvlm-webcam",
                    )
                with gr.Tab("Video file"):
                    video = gr.Video(sources=["upload"], label="Video file", elem_id="streamvlm-video")
                    fast = gr.Checkbox(
                        value=False,
                        label="Don't wait for real time: play as fast as the model can watch",
                        elem_id="streamvlm-fast",
                    )
                    with gr.Row():
                        play = gr.Button("Play as a live stream", variant="primary", elem_id="streamvlm-play")
                        stop = gr.Button("Stop", elem_id="streamvlm-stop")
                    feeding = gr.Image(label="What the model is watching", interactive=False, height=200)
                    playback = gr.Markdown(elem_id="streamvlm-playback")
                panel = gr.Markdown(memory_markdown(None), elem_id="streamvlm-memory")
                with gr.Accordion(
                    "Advanced: memory details", open=False, elem_id="streamvlm-memory-advanced"
                ):
                    details = gr.Markdown(memory_details_markdown(None), elem_id="streamvlm-memory-details")
                reset = gr.Button("Forget everything and start over", elem_id="streamvlm-reset")
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Chat", height=380, elem_id="streamvlm-chat")
                question = gr.Textbox(
                    placeholder="Ask about what the video has shown…",
                    show_label=False,
                    submit_btn="Ask",
                    elem_id="streamvlm-question",
                )
                with gr.Accordion(
                    "Advanced: answer options", open=False, elem_id="streamvlm-answer-advanced"
                ):
                    tokens = gr.Slider(
                        1,
                        512,
                        value=max_new_tokens,
                        step=1,
                        label="Longest answer (max new tokens)",
                        info="The most tokens (words or pieces of words) an answer may have.",
                    )
                    top_k = gr.Number(
                        value=0,
                        precision=0,
                        minimum=0,
                        label="Moments to recall (retrieval top-k)",
                        info="Look only at this many moments of the video, the ones that best match the "
                        "question, plus the latest. 0: the session's setting (by default every moment "
                        "that fits in the answer's memory).",
                    )
                attended = gr.HTML(EMPTY, css_template=CSS, js_on_load=None, elem_id="streamvlm-attended")
        timer = gr.Timer(PANEL_REFRESH_S)

        # Frame handlers only queue frames (Session.push_frame): they never wait for the
        # model, so they need no concurrency limit; the engine serialises model work.
        webcam.stream(
            handlers.on_frame,
            inputs=webcam,
            outputs=None,
            stream_every=1.0 / fps,
            concurrency_limit=None,
            show_progress="hidden",
        )
        playing = play.click(
            handlers.on_play, inputs=[video, fast], outputs=[feeding, playback], concurrency_limit=None
        )
        stop.click(None, cancels=[playing])
        question.submit(
            handlers.on_ask,
            inputs=[question, chat, tokens, top_k],
            outputs=[chat, question, attended],
            concurrency_limit=None,
        )
        timer.tick(handlers.on_tick, outputs=[panel, details], concurrency_limit=None, show_progress="hidden")
        reset.click(handlers.on_reset, outputs=[chat, attended, panel, details], cancels=[playing])
        demo.unload(handlers.on_unload)
    return demo


def mount_demo(
    app,
    engine,
    path: str = "/demo",
    memory: MemoryConfig | None = None,
    *,
    sessions: DemoSessions | None = None,
    max_upload: str = "200mb",
    **options,
):
    """Mount the demo (``build_demo(engine, memory, **options)``) at ``path`` of the FastAPI ``app``.

    The demo's sessions are its own (not the server's REST/websocket sessions) and are
    closed when the app shuts down. ``max_upload`` caps video uploads. Returns ``app``.
    """
    sessions = sessions if sessions is not None else DemoSessions(engine, memory)
    demo = build_demo(engine, sessions=sessions, **options)
    app = gr.mount_gradio_app(app, demo, path=path, max_file_size=max_upload)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_):
        try:
            async with inner(app_) as state:
                yield state
        finally:
            sessions.close_all()

    app.router.lifespan_context = lifespan
    return app


class _Handlers:
    """The Gradio event handlers of one demo, over its ``DemoSessions``."""

    def __init__(self, sessions: DemoSessions, fps: float):
        self.sessions = sessions
        self.fps = fps

    def _session(self, request: gr.Request):
        try:
            return self.sessions.get_or_create(request.session_hash)
        except StreamVLMError as e:
            raise gr.Error(str(e)) from None

    def on_frame(self, frame, request: gr.Request) -> None:
        if frame is None:  # the stream's first event can come before the camera has a picture
            return
        try:
            self._session(request).push(frame)
        except StreamVLMError as e:
            log.warning("webcam frame refused: %s", e)

    def on_play(self, path, fast: bool, request: gr.Request):
        if not path:
            raise gr.Error("upload a video file first")
        session = self._session(request)
        fed = 0
        try:
            for rgb, t in session.play(video_frames(path, self.fps), realtime=not fast):
                fed += 1
                yield rgb, f"playing: {fed} frames sent, up to {clock(t)}"
        except StreamVLMError as e:
            raise gr.Error(str(e)) from None
        yield gr.skip(), f"done: {fed} frames sent"

    def on_ask(
        self, question: str, history: list, max_new_tokens: float, top_k: float | None, request: gr.Request
    ):
        question = (question or "").strip()
        if not question:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        session = self._session(request)
        options = {"max_new_tokens": int(max_new_tokens)}
        if top_k:
            options["top_k"] = int(top_k)
        try:
            stream = session.ask_stream(question, **options)
        except StreamVLMError as e:
            raise gr.Error(str(e)) from None
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        waiting = session.frames_waiting()
        if waiting:  # the answer starts once they are encoded: say why nothing comes yet
            history[-1] = {"role": "assistant", "content": waiting_note(waiting)}
            yield history, "", gr.skip()
        text = ""
        try:
            for delta in stream:
                text += delta
                history[-1] = {"role": "assistant", "content": text}
                yield history, "", gr.skip()
        except StreamVLMError as e:  # e.g. the question's wait for its frames timed out
            raise gr.Error(str(e)) from None
        finally:  # also when Gradio abandons the generator before its first delta
            stream.release()
        retrieved = session.retrieved(stream.answer)
        history[-1] = {"role": "assistant", "content": f"{text}\n\n*{answer_note(stream.answer, retrieved)}*"}
        yield history, "", attended_html(retrieved, session.thumbnails.capacity)

    def on_tick(self, request: gr.Request) -> tuple[str, str]:
        session = self.sessions.get(request.session_hash)
        stats = session.stats() if session is not None else None
        return memory_markdown(stats), memory_details_markdown(stats)

    def on_reset(self, request: gr.Request):
        self.sessions.close(request.session_hash)
        return [], EMPTY, memory_markdown(None), memory_details_markdown(None)

    def on_unload(self, request: gr.Request) -> None:
        self.sessions.close(request.session_hash)
