from __future__ import annotations

from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from services.common.routes import LLM_ROUTE, REMOTE_ROUTE
from services.selector.catalog import Catalog, CatalogEntry
from services.selector.rank import RequestFacts, Where, guess_language, rank

ENGLISH = RequestFacts.of("Is this review positive? 'I loved it'")


def _worker(name: str, in_flight: int, task: str, *models: str) -> WorkerInfo:
    served = [ServedModel(task=task, model=m) for m in models]
    return WorkerInfo(worker_id=name, capacity=2, in_flight=in_flight, models=served)


def _catalog(*entries: CatalogEntry) -> Catalog:
    catalog = Catalog()
    catalog.add(entries)
    return catalog


def test_least_loaded_first_and_nothing_for_an_unserved_task() -> None:
    workers = [
        _worker("w1", 2, "text-classification", "busy/model"),
        _worker("w2", 0, "text-classification", "idle/model"),
    ]
    ranked = rank("text-classification", ENGLISH, workers, Catalog())
    assert [c.model for c in ranked] == ["idle/model", "busy/model"]
    assert rank("image-to-text", ENGLISH, workers, Catalog()) == []


def test_replicas_of_one_model_pool_their_load() -> None:
    workers = [
        _worker("w1", 2, "text-classification", "a/model"),
        _worker("w2", 0, "text-classification", "a/model"),
        _worker("w3", 1, "text-classification", "b/model"),
    ]
    (a, b) = rank("text-classification", ENGLISH, workers, Catalog())
    assert (a.model, a.replicas, a.load) == ("a/model", 2, 0.5)
    assert (b.model, b.load) == ("b/model", 0.5)


def test_language_fit_beats_popularity() -> None:
    catalog = _catalog(
        CatalogEntry("en/popular", "text-classification", downloads=10**6, languages=("en",)),
        CatalogEntry("zh/model", "text-classification", downloads=10, languages=("zh",)),
    )
    workers = [_worker("w", 0, "text-classification", "en/popular", "zh/model")]
    chinese = RequestFacts.of("这条评论是正面的吗")
    assert rank("text-classification", chinese, workers, catalog)[0].model == "zh/model"
    assert rank("text-classification", ENGLISH, workers, catalog)[0].model == "en/popular"


def test_tags_the_request_mentions_raise_a_model() -> None:
    catalog = _catalog(
        CatalogEntry("generic", "text-classification", downloads=1000),
        CatalogEntry("emo", "text-classification", downloads=5, tags=("emotion-detection",)),
    )
    workers = [_worker("w", 0, "text-classification", "generic", "emo")]
    facts = RequestFacts.of("Which emotion does this text show?")
    assert rank("text-classification", facts, workers, catalog)[0].model == "emo"


def test_remote_candidates_come_after_local_and_are_cut_to_top_k() -> None:
    catalog = _catalog(
        *[CatalogEntry(f"hub/m{i}", "image-to-text", downloads=100 - i) for i in range(10)],
        CatalogEntry("local/m", "image-to-text", downloads=1),
    )
    workers = [
        _worker("local", 0, "image-to-text", "local/m"),
        _worker("remote", 0, "image-to-text", REMOTE_ROUTE),
    ]
    ranked = rank("image-to-text", ENGLISH, workers, catalog, top_k=3)
    assert [(c.model, c.route) for c in ranked] == [
        ("local/m", "local/m"),
        ("hub/m0", REMOTE_ROUTE),
        ("hub/m1", REMOTE_ROUTE),
    ]
    assert [c.where for c in ranked] == [Where.LOCAL, Where.REMOTE, Where.REMOTE]


def test_the_llm_does_its_text_tasks_instead_of_a_remote_call() -> None:
    catalog = _catalog(CatalogEntry("hub/bart", "summarization", downloads=10**6))
    workers = [_worker("w", 0, "summarization", LLM_ROUTE, REMOTE_ROUTE)]
    (only,) = rank("summarization", ENGLISH, workers, catalog)
    assert (only.model, only.route, only.where) == (LLM_ROUTE, LLM_ROUTE, Where.LLM)
    # A model deployed on purpose still comes first.
    workers.append(_worker("w2", 0, "summarization", "local/bart"))
    assert [c.model for c in rank("summarization", ENGLISH, workers, catalog)] == [
        "local/bart",
        LLM_ROUTE,
    ]


def test_control_tasks_go_to_the_builtin_annotator() -> None:
    workers = [_worker("w", 0, "canny-control", "lllyasviel/ControlNet", "builtin:canny")]
    (only,) = rank("canny-control", ENGLISH, workers, Catalog())
    assert only.model == "builtin:canny"


def test_language_guess() -> None:
    assert guess_language("Describe the picture") == "en"
    assert guess_language("この画像を説明して") == "ja"
    assert guess_language("描述这张图片") == "zh"
    assert guess_language("Опиши картинку") == "ru"
    assert guess_language("Décris la photo et le texte, je veux une réponse") == "fr"
    # languages that share a script with a bigger one, told apart by the model
    assert guess_language("Descrivi questa immagine, per favore") == "it"
    assert guess_language("Опиши це зображення, будь ласка") == "uk"
    assert guess_language("این تصویر را توصیف کن") == "fa"
    assert guess_language("תאר את התמונה הזאת") == "he"
    assert guess_language("123 !?") == "en"  # no words: the default
