# Model configs take their fields as **kwargs, which mypy cannot see.
# mypy: disable-error-code="call-arg,no-untyped-call"
"""Tiny random-weight models for the executor's tests, built and saved to a directory.

Each loads through the same code as a real model (`transformers` pipelines and Auto classes);
their answers are random, so tests check shapes and kinds, not content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>", "<s>"]
_TEXT = "good bad movie great awful i the cat sat on a mat who where is paris france capital of"
WORDS = [*_SPECIAL, *_TEXT.split(), "city", "sleeps", "kitten", "an", "and", "what", "<image>"]


def word_tokenizer(target: Path, **special: str) -> Any:
    """A word-level fast tokenizer over `WORDS`, saved to `target`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokens = {"unk_token": "[UNK]", "pad_token": "[PAD]", **special}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **tokens)
    tokenizer.save_pretrained(target)
    return tokenizer


def _bert(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        **extra,
    )


def token_classifier(target: Path) -> Path:
    from transformers import BertForTokenClassification

    labels = {0: "O", 1: "B-LOC", 2: "I-LOC"}
    config = _bert(num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    BertForTokenClassification(config).save_pretrained(target)
    word_tokenizer(target, cls_token="[CLS]", sep_token="[SEP]")
    return target


def question_answerer(target: Path) -> Path:
    from transformers import BertForQuestionAnswering

    BertForQuestionAnswering(_bert()).save_pretrained(target)
    word_tokenizer(target, cls_token="[CLS]", sep_token="[SEP]")
    return target


def text_generator(target: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = WORDS.index("</s>")
    config = GPT2Config(
        vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2, n_positions=128,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=0,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(target)
    word_tokenizer(target, eos_token="</s>", bos_token="</s>")
    return target


def seq2seq(target: Path) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=len(WORDS), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0,
        bos_token_id=WORDS.index("<s>"), eos_token_id=WORDS.index("</s>"),
        decoder_start_token_id=WORDS.index("</s>"), forced_eos_token_id=WORDS.index("</s>"),
    )  # fmt: skip
    BartForConditionalGeneration(config).save_pretrained(target)
    word_tokenizer(target, eos_token="</s>", bos_token="<s>")
    return target


def _vit_processor(target: Path, size: int = 32) -> None:
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(target)


def image_classifier(target: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    labels = {0: "cat", 1: "dog"}
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2, id2label=labels, label2id={"cat": 0, "dog": 1},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(target)
    _vit_processor(target)
    return target


def object_detector(target: Path) -> Path:
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    labels = {0: "cat", 1: "dog"}
    config = YolosConfig(
        image_size=[32, 32], patch_size=8, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_detection_tokens=5, num_labels=2,
        id2label=labels, label2id={"cat": 0, "dog": 1},
    )  # fmt: skip
    YolosForObjectDetection(config).save_pretrained(target)
    YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 32}).save_pretrained(target)
    return target


def depth_estimator(target: Path) -> Path:
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor

    config = GLPNConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8,
        mlp_ratios=[2, 2, 2, 2], head_in_index=-1,
    )  # fmt: skip
    GLPNForDepthEstimation(config).save_pretrained(target)
    GLPNImageProcessor().save_pretrained(target)
    return target


def segmenter(target: Path) -> Path:
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    labels = {0: "sky", 1: "road", 2: "tree"}
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 1], decoder_hidden_size=16, num_labels=3, id2label=labels,
        label2id={v: k for k, v in labels.items()}, mlp_ratios=[2, 2], strides=[4, 2],
        patch_sizes=[7, 3],
    )  # fmt: skip
    SegformerForSemanticSegmentation(config).save_pretrained(target)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(target)
    return target


def _wav2vec2(**extra: Any) -> Any:
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, vocab_size=8, **extra,
    )  # fmt: skip


def audio_classifier(target: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    labels = {0: "speech", 1: "music"}
    config = _wav2vec2(num_labels=2, id2label=labels, label2id={"speech": 0, "music": 1})
    Wav2Vec2ForSequenceClassification(config).save_pretrained(target)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(target)
    return target


def speech_recognizer(target: Path) -> Path:
    from transformers import (
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    target.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5, "d": 6, "e": 7}
    (target / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(target / "vocab.json"))
    processor = Wav2Vec2Processor(Wav2Vec2FeatureExtractor(sampling_rate=16000), tokenizer)
    Wav2Vec2ForCTC(_wav2vec2(pad_token_id=0)).save_pretrained(target)
    processor.save_pretrained(target)
    return target


def speech_synthesizer(target: Path) -> Path:
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    target.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(" abcdefghijklmnopqrstuvwxyz")}
    (target / "vocab.json").write_text(json.dumps(vocab))
    VitsTokenizer(
        str(target / "vocab.json"), add_blank=False, normalize=False, phonemize=False
    ).save_pretrained(target)
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ffn_dim=32, flow_size=8, spectrogram_bins=17, upsample_initial_channel=16,
        upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1, duration_predictor_filter_channels=16,
        depth_separable_num_layers=1, sampling_rate=16000,
    )  # fmt: skip
    VitsModel(config).save_pretrained(target)
    return target


def _bert_vocab_tokenizer(target: Path) -> Any:
    """A BERT word-piece tokenizer over `WORDS` (what BLIP's processor takes)."""
    from transformers import BertTokenizer

    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return BertTokenizer(
        vocab=str(target / "vocab.txt"), unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", model_max_length=64,
    )  # fmt: skip


def captioner(target: Path) -> Path:
    """BLIP: a ViT image encoder and a BERT text decoder; captions, and answers a text prompt."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    sep = WORDS.index("[SEP]")
    config = BlipConfig(
        text_config={
            "vocab_size": len(WORDS), "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
            "encoder_hidden_size": 16, "bos_token_id": WORDS.index("[CLS]"), "pad_token_id": 0,
            "sep_token_id": sep, "eos_token_id": sep,
        },
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "projection_dim": 16,
        },
        projection_dim=16,
    )  # fmt: skip
    BlipForConditionalGeneration(config).save_pretrained(target)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor, _bert_vocab_tokenizer(target)).save_pretrained(target)
    return target


def document_reader(target: Path) -> Path:
    """Donut: a Swin image encoder and a BART decoder; answers from the page, no OCR."""
    from transformers import (
        BartConfig,
        DonutImageProcessor,
        DonutProcessor,
        DonutSwinConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    start, end = WORDS.index("<s>"), WORDS.index("</s>")
    encoder = DonutSwinConfig(
        image_size=[32, 32], patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
        window_size=4,
    )  # fmt: skip
    decoder = BartConfig(
        vocab_size=len(WORDS), d_model=16, decoder_layers=1, decoder_attention_heads=2,
        decoder_ffn_dim=32, max_position_embeddings=64, is_decoder=True,
        add_cross_attention=True, pad_token_id=0, bos_token_id=start, eos_token_id=end,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = start, 0, end
    model = VisionEncoderDecoderModel(config=config)
    # The pipeline passes no length of its own at call time; random weights never end a reply.
    model.generation_config.max_new_tokens = 8
    model.save_pretrained(target)
    tokenizer = word_tokenizer(target, eos_token="</s>", bos_token="<s>")
    DonutProcessor(
        DonutImageProcessor(size={"height": 32, "width": 32}), tokenizer
    ).save_pretrained(target)
    return target


def chat_vision_model(target: Path) -> Path:
    """LLaVA: a CLIP vision tower and a Llama decoder, with a chat template, as chat VLMs have."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer(target, eos_token="</s>", bos_token="<s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})  # one token, unsplit
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, projection_dim=16,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=WORDS.index("<s>"), eos_token_id=WORDS.index("</s>"),
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=WORDS.index("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    model.generation_config.max_new_tokens = 8
    model.save_pretrained(target)
    template = (
        "{% for m in messages %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}{% endfor %}"
    )
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        chat_template=template, image_token="<image>", num_additional_image_tokens=1,
    ).save_pretrained(target)  # fmt: skip
    return target
