from __future__ import annotations

from chorus.v1.messages_pb2 import ArtifactRef, Kind

from services.planner.rules import plan_by_rules

PHOTO = ArtifactRef(
    id="a1-photo.jpg", name="photo.jpg", media_type="image/jpeg", kind=Kind.KIND_IMAGE
)
CLIP = ArtifactRef(id="a2-clip.wav", name="clip.wav", media_type="audio/wav", kind=Kind.KIND_AUDIO)


def test_describe_and_read_aloud_is_a_chain() -> None:
    tasks = plan_by_rules("Describe photo.jpg and read it aloud", {"photo.jpg": PHOTO})
    assert [t.task for t in tasks] == ["image-to-text", "text-to-speech"]
    assert tasks[0].args[0].artifact.id == PHOTO.id
    speech = tasks[1]
    assert list(speech.deps) == [0]
    assert speech.args[0].generated.task_id == 0
    assert speech.args[0].generated.kind == Kind.KIND_TEXT


def test_sentence_similarity_takes_the_two_quoted_texts() -> None:
    (task,) = plan_by_rules('How similar are "a cat sleeps" and "a dog runs"?', {})
    assert task.task == "sentence-similarity"
    assert [a.text for a in task.args] == ["a cat sleeps", "a dog runs"]


def test_an_intent_needs_its_kind_of_input() -> None:
    # "edges" is an image intent: with no image attached there is nothing to run it on.
    assert plan_by_rules("find the edges", {}) == []
    (task,) = plan_by_rules("transcribe clip.wav", {"clip.wav": CLIP})
    assert task.task == "automatic-speech-recognition"


def test_chit_chat_plans_nothing() -> None:
    assert plan_by_rules("hello there, how are you?", {}) == []


def test_text_task_uses_the_quoted_text() -> None:
    (task,) = plan_by_rules("What is the sentiment of 'what a great movie'?", {})
    assert (task.task, task.args[0].text) == ("text-classification", "what a great movie")


def test_files_the_request_names_are_inputs_too() -> None:
    (task,) = plan_by_rules("Detect the objects in 'street/example.jpg', please", {})
    assert task.task == "object-detection"
    assert task.args[0].text == "street/example.jpg"  # a path, passed on as written


def test_generated_image_feeds_the_next_task() -> None:
    first, second = plan_by_rules("Generate an image of a red fox, then describe it", {})
    assert (first.task, second.task) == ("text-to-image", "image-to-text")
    assert second.args[0].generated.task_id == 0 and list(second.deps) == [0]


def test_a_file_named_in_passing_is_not_an_entity_request() -> None:
    (task,) = plan_by_rules("Transcribe the file named 'meeting.wav'", {})
    assert task.task == "automatic-speech-recognition"


def test_control_maps_are_asked_for_by_name() -> None:
    tasks = plan_by_rules(
        "Make a scribble, a normal map and the straight lines of photo.jpg", {"photo.jpg": PHOTO}
    )
    assert [t.task for t in tasks] == ["scribble-control", "normal-control", "mlsd-control"]
    (pose,) = plan_by_rules("Find the pose of the dancer in photo.jpg", {"photo.jpg": PHOTO})
    assert pose.task == "openpose-control"
