"""The table: one handler per task type, declared once with keyword arguments.

The pieces live by concern: the data model and its checks in `handler.py`, the local calls in
`local_calls.py`, the remote calls in `remote_calls.py`, the post-processing in
`postprocess.py`, the LLM's instructions for the text tasks in `prompts/llm_tasks.json`.
"""

from __future__ import annotations

import json

from services.common.prompts import load_prompt
from services.common.routes import BUILTIN_PREFIX
from services.common.tasks import AUDIO, IMAGE, TEXT, VIDEO
from services.executor import imageops
from services.executor import local_calls as run
from services.executor import postprocess as post
from services.executor import remote_calls as remote
from services.executor.handler import (
    JSON,
    Handler,
    Loader,
    Local,
    Operation,
    Output,
    Remote,
    build_registry,
)

_TEXT = (Output("text", TEXT),)
_LABELS = (Output("text", TEXT), Output("labels", JSON))
_IMAGE = (Output("image", IMAGE),)
_ANSWER = (Output("text", TEXT), Output("answer", JSON))
_AUDIO = (Output("audio", AUDIO),)
_INSTRUCTIONS: dict[str, str] = json.loads(load_prompt("services.executor", "llm_tasks.json"))

# The annotators HuggingGPT runs before drawing with a ControlNet, as `builtin:<name>`
# operations on OpenCV; HED and M-LSD also run as their networks (`Loader.ANNOTATOR`), as
# OpenPose does.
_ANNOTATORS: dict[str, Operation] = {
    "canny": imageops.canny,
    "hed": imageops.soft_edges,
    "mlsd": imageops.straight_lines,
    "normal": imageops.normal_map,
    "scribble": imageops.scribble,
}
_NETWORKS = {"hed", "mlsd", "openpose"}
_CONTROLNETS = ("canny", "hed", "mlsd", "normal", "openpose", "scribble", "seg", "depth")


def _text_task(task: str, local: Local, remote_call: Remote) -> Handler:
    """A text task the LLM itself can also do (`tasks.LLM_TASKS`)."""
    return Handler(
        task=task,
        outputs=_TEXT,
        post=post.generated,
        local=local,
        remote=remote_call,
        llm_instruction=_INSTRUCTIONS[task],
    )


def _image_pipeline(task: str, *, batchable: bool = False) -> Local:
    """A transformers pipeline that takes the input image alone."""
    return Local(
        loader=Loader.PIPELINE,
        call=run.pipeline(lambda i: i["image"]),
        pipeline_task=task,
        batchable=batchable,
    )


def _annotator(name: str) -> Local:
    """A `*-control` annotator: its network where it has one (by task), else built-ins only."""
    if name in _NETWORKS:
        return Local(
            loader=Loader.ANNOTATOR, call=run.each(run.operation), pipeline_task=f"{name}-control"
        )
    return Local(loader=Loader.BUILTIN, call=run.each(run.operation))


_SEQ2SEQ = Local(loader=Loader.SEQ2SEQ, call=run.seq2seq)

_TEXT_TASKS = [
    Handler(
        task="text-classification",
        outputs=_LABELS,
        post=post.labels,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(lambda i: i["text"], truncation=True, max_length=run.max_length),
            pipeline_task="text-classification",
            batchable=True,
        ),
        remote=remote.text_classification,
    ),
    Handler(
        task="token-classification",
        outputs=(Output("text", TEXT), Output("entities", JSON)),
        post=post.entities,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(lambda i: i["text"]),
            pipeline_task="token-classification",
            batchable=True,
        ),
        remote=remote.token_classification,
    ),
    _text_task("summarization", _SEQ2SEQ, remote.generation("summary_text")),
    _text_task("translation", _SEQ2SEQ, remote.generation("translation_text")),
    _text_task("text2text-generation", _SEQ2SEQ, remote.generation()),
    Handler(
        task="question-answering",
        outputs=_ANSWER,
        post=post.answer,
        local=Local(loader=Loader.EXTRACTIVE_QA, call=run.each(run.extractive_qa)),
        remote=remote.question_answering,
    ),
    _text_task(
        "conversational",
        Local(
            loader=Loader.PIPELINE,
            call=run.each(run.conversation),
            pipeline_task="text-generation",
        ),
        remote.generation(),
    ),
    _text_task(
        "text-generation",
        Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(lambda i: i["text"], max_new_tokens=48, return_full_text=False),
            pipeline_task="text-generation",
        ),
        remote.generation(),
    ),
    Handler(
        task="sentence-similarity",
        outputs=(Output("text", TEXT), Output("score", JSON)),
        post=post.score,
        local=Local(loader=Loader.SENTENCE_TRANSFORMERS, call=run.each(run.similarity)),
        remote=remote.sentence_similarity,
    ),
    Handler(
        task="tabular-classification",
        outputs=_LABELS,
        post=post.labels,
        # HuggingGPT gives this task a picture of a table; its catalog's models are
        # scikit-learn, Keras and AutoTrain (XGBoost) pipelines over named columns.
        needs="reading the table's rows and columns out of the image (OCR, such as Tesseract), "
        "which Chorus does not ship, and a scikit-learn/Keras/XGBoost runtime for the task's "
        "models, which transformers does not load",
    ),
]

_IMAGE_TASKS = [
    Handler(
        task="object-detection",
        outputs=(Output("image", IMAGE), Output("text", TEXT), Output("boxes", JSON)),
        post=post.detections,
        local=_image_pipeline("object-detection", batchable=True),
        remote=remote.object_detection,
    ),
    Handler(
        task="image-classification",
        outputs=_LABELS,
        post=post.labels,
        local=_image_pipeline("image-classification", batchable=True),
        remote=remote.image_classification,
    ),
    Handler(
        task="image-to-image",
        outputs=_IMAGE,
        post=post.image,
        local=Local(
            loader=Loader.DIFFUSERS, call=run.each(run.diffusion), pipeline_task="image-to-image"
        ),
        remote=remote.image_to_image,
    ),
    Handler(
        task="image-to-text",
        outputs=_TEXT,
        post=post.generated,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.each(run.vision_language("Describe this image in one sentence.")),
            pipeline_task="image-text-to-text",
        ),
        remote=remote.image_to_text,
    ),
    Handler(
        task="text-to-image",
        outputs=_IMAGE,
        post=post.image,
        local=Local(
            loader=Loader.DIFFUSERS, call=run.each(run.diffusion), pipeline_task="text-to-image"
        ),
        remote=remote.text_to_image,
    ),
    Handler(
        task="text-to-video",
        outputs=(Output("video", VIDEO),),
        post=post.video_file,
        local=Local(loader=Loader.DIFFUSERS, call=run.each(run.video)),
        remote=remote.text_to_video,
    ),
    Handler(
        task="visual-question-answering",
        outputs=_TEXT,
        post=post.generated,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.each(run.vision_language("")),
            pipeline_task="image-text-to-text",
        ),
        remote=remote.visual_question_answering,
    ),
    Handler(
        task="document-question-answering",
        outputs=_ANSWER,
        post=post.answer,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(lambda i: {"image": i["image"], "question": i["text"]}),
            pipeline_task="document-question-answering",
        ),
        remote=remote.document_question_answering,
    ),
    Handler(
        task="image-segmentation",
        outputs=(Output("image", IMAGE), Output("text", TEXT), Output("segments", JSON)),
        post=post.segments,
        local=_image_pipeline("image-segmentation"),
        remote=remote.image_segmentation,
    ),
    Handler(
        task="depth-estimation",
        outputs=_IMAGE,
        post=post.depth,
        local=_image_pipeline("depth-estimation", batchable=True),
    ),
]

_AUDIO_TASKS = [
    Handler(
        task="text-to-speech",
        outputs=_AUDIO,
        post=post.speech,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(lambda i: i["text"]),
            pipeline_task="text-to-audio",
        ),
        remote=remote.text_to_speech,
    ),
    Handler(
        task="automatic-speech-recognition",
        outputs=_TEXT,
        post=post.transcript,
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(run.audio_input),
            pipeline_task="automatic-speech-recognition",
        ),
        remote=remote.automatic_speech_recognition,
    ),
    Handler(
        task="audio-to-audio",
        outputs=_AUDIO,
        post=post.audios,
        remote=remote.audio_to_audio,
        # The catalog's models are SpeechBrain and Asteroid networks (enhancement, separation);
        # transformers' one audio-to-audio model, SpeechT5 voice conversion, also needs a
        # speaker embedding from a SpeechBrain x-vector model.
        needs="a speech enhancement or separation library (SpeechBrain, Asteroid) outside "
        "transformers; run it remotely (CHORUS_REMOTE_INFERENCE=1)",
    ),
    Handler(
        task="audio-classification",
        outputs=_LABELS,
        post=post.labels,
        # Not batched: padded audio without an attention mask (wav2vec2-base) changes answers.
        local=Local(
            loader=Loader.PIPELINE,
            call=run.pipeline(run.audio_input),
            pipeline_task="audio-classification",
        ),
        remote=remote.audio_classification,
    ),
]

_CONTROL_TASKS = [
    *(
        Handler(
            task=f"{name}-control",
            outputs=_IMAGE,
            post=post.control,
            local=_annotator(name),
            builtins={f"{BUILTIN_PREFIX}{name}": op},
        )
        for name, op in _ANNOTATORS.items()
    ),
    Handler(
        task="depth-control",
        outputs=_IMAGE,
        post=post.depth,
        local=_image_pipeline("depth-estimation", batchable=True),
    ),
    Handler(
        task="seg-control",
        outputs=_IMAGE,
        post=post.segment_map,
        local=_image_pipeline("image-segmentation"),
    ),
    Handler(
        task="openpose-control",
        outputs=_IMAGE,
        post=post.control,
        local=_annotator("openpose"),
    ),
    *(
        Handler(
            task=f"{name}-text-to-image",
            outputs=_IMAGE,
            post=post.image,
            local=Local(loader=Loader.CONTROLNET, call=run.each(run.diffusion)),
        )
        for name in _CONTROLNETS
    ),
]

HANDLERS = build_registry([*_TEXT_TASKS, *_IMAGE_TASKS, *_AUDIO_TASKS, *_CONTROL_TASKS])
