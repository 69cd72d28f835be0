"""How each task calls remote inference (`huggingface_hub.InferenceClient`).

Each `Remote` answers in the shape the local pipelines do, so one post-processing serves both.
"""

from __future__ import annotations

from typing import Any

from services.executor.handler import Inputs, Remote
from services.executor.media import encode_png, encode_wav


def png(inputs: Inputs, slot: str = "image") -> bytes:
    return encode_png(inputs[slot])


def wav(inputs: Inputs) -> bytes:
    return encode_wav(inputs["audio"])


def generation(attribute: str = "") -> Remote:
    """Text generation, or the summarization / translation endpoint whose answer has `attribute`."""
    method = {"summary_text": "summarization", "translation_text": "translation"}.get(attribute)

    def run(client: Any, url: str, inputs: Inputs) -> Any:
        if method is None:
            return [{"generated_text": client.text_generation(inputs["text"], model=url)}]
        answer = getattr(client, method)(inputs["text"], model=url)
        return [{"generated_text": getattr(answer, attribute)}]

    return run


def text_classification(c: Any, url: str, i: Inputs) -> Any:
    return c.text_classification(i["text"], model=url)


def token_classification(c: Any, url: str, i: Inputs) -> Any:
    return c.token_classification(i["text"], model=url)


def question_answering(c: Any, url: str, i: Inputs) -> Any:
    return c.question_answering(question=i["text"], context=i["context"], model=url)


def sentence_similarity(c: Any, url: str, i: Inputs) -> Any:
    return c.sentence_similarity(i["text1"], other_sentences=[i["text2"]], model=url)


def object_detection(c: Any, url: str, i: Inputs) -> Any:
    return c.object_detection(png(i), model=url)


def image_classification(c: Any, url: str, i: Inputs) -> Any:
    return c.image_classification(png(i), model=url)


def image_to_image(c: Any, url: str, i: Inputs) -> Any:
    return c.image_to_image(png(i), prompt=i.get("text") or None, model=url)


def image_to_text(c: Any, url: str, i: Inputs) -> Any:
    return [{"generated_text": c.image_to_text(png(i), model=url).generated_text}]


def text_to_image(c: Any, url: str, i: Inputs) -> Any:
    return c.text_to_image(i["text"], model=url)


def text_to_video(c: Any, url: str, i: Inputs) -> Any:
    return c.text_to_video(i["text"], model=url)


def visual_question_answering(c: Any, url: str, i: Inputs) -> Any:
    answers = c.visual_question_answering(png(i), i["text"], model=url)
    return [{"generated_text": answers[0].answer}]


def document_question_answering(c: Any, url: str, i: Inputs) -> Any:
    return c.document_question_answering(png(i), i["text"], model=url)


def image_segmentation(c: Any, url: str, i: Inputs) -> Any:
    return c.image_segmentation(png(i), model=url)


def text_to_speech(c: Any, url: str, i: Inputs) -> Any:
    return c.text_to_speech(i["text"], model=url)


def automatic_speech_recognition(c: Any, url: str, i: Inputs) -> Any:
    return c.automatic_speech_recognition(wav(i), model=url)


def audio_to_audio(c: Any, url: str, i: Inputs) -> Any:
    return c.audio_to_audio(wav(i), model=url)


def audio_classification(c: Any, url: str, i: Inputs) -> Any:
    return c.audio_classification(wav(i), model=url)
