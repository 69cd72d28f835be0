# diffusers is untyped; its classes gain methods from mixins mypy cannot see.
# mypy: disable-error-code="no-untyped-call,attr-defined"
"""Tiny random-weight diffusion pipelines for the executor's tests, built and saved to a directory.

Stable Diffusion's parts at the smallest sizes that fit together: a UNet of two blocks, a VAE
that halves the image (so 64x48 pixels are 32x24 latents), a CLIP text encoder of width 32 with
a byte-level tokenizer, and a ControlNet whose conditioning embedding halves the control image
as the VAE does. They load through the same diffusers code as the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_WIDTH = 32
MAX_PROMPT_TOKENS = 77  # as CLIP's
_BLOCKS = (4, 8)
_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


def clip_tokenizer(target: Path) -> Any:
    """A CLIP tokenizer over single bytes (no merges): every text tokenizes, one byte a token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_PROMPT_TOKENS)
    tokenizer.save_pretrained(target)
    return tokenizer


def _text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=MAX_PROMPT_TOKENS,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )  # fmt: skip
    return CLIPTextModel(config)


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=list(_BLOCKS), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=2,
    )  # fmt: skip


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def stable_diffusion(target: Path) -> Path:
    """A Stable Diffusion pipeline that draws 64x64 images by default."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(target / "tokenizer")
    unet = UNet2DConditionModel(
        block_out_channels=_BLOCKS, layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=_DOWN, up_block_types=_UP,
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=2,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(target)
    return target


def controlnet(target: Path) -> Path:
    """A ControlNet for `stable_diffusion`'s UNet."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    ControlNetModel(
        block_out_channels=_BLOCKS, layers_per_block=1, in_channels=4, down_block_types=_DOWN,
        cross_attention_dim=TEXT_WIDTH, conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=2,
    ).save_pretrained(target)  # fmt: skip
    return target


def text_to_video(target: Path) -> Path:
    """A text-to-video pipeline (ModelScope's architecture: a 3D UNet over SD's VAE and CLIP)."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(target / "tokenizer")
    unet = UNet3DConditionModel(
        block_out_channels=_BLOCKS, layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4, norm_num_groups=2,
    )  # fmt: skip
    pipe = TextToVideoSDPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(),
    )  # fmt: skip
    pipe.save_pretrained(target)
    return target
