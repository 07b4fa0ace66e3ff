"""HaineiFRDM (paper Fig. 2(a)): frozen SD1.5 + AnimateDiff backbone guided by the trainable FRDM networks.

``build`` makes random weights (tests, the meta device for parameter counts, GPU benchmarks);
``frdm.engine.weights.load_model`` assembles the same class from local weight files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from .conditioning import resize_global_frame
from .config import FRDMConfig
from .guidance import RestorationGuidanceNetwork
from .preprocess import PreprocessModule

# SD1.5's training noise schedule (its scheduler_config.json), for DDPM/DDIM schedulers built by training and
# inference.
SD15_NOISE_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# OpenAI CLIP's input normalisation (ViT-L/14 preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class FRDMOutput:
    noise_pred: Tensor  # (B, F, 4, h, w)
    preprocess_images: list[Tensor]  # one (B, F, 3, H, W) per Preprocess scale, for Eq. 4


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over a small in-memory vocabulary (single letters), for random-weight models.

    Built offline (no files, no hub); real weights use the CLIP folder's tokenizer. Special tokens come first
    (start 0, end 1, pad "!" 2), matching ``FRDMConfig.text_config`` for small vocabularies.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, pad_token="!")


class HaineiFRDM(nn.Module):
    def __init__(
        self,
        config: FRDMConfig,
        *,
        unet: UNetMotionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModel,
        preprocess: PreprocessModule | None = None,
        guidance: RestorationGuidanceNetwork | None = None,
    ):
        super().__init__()
        config.check()
        self.config = config
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        if guidance is None:
            guidance = RestorationGuidanceNetwork(config)
            guidance.to(device=_device_of(unet), dtype=_dtype_of(unet))
            guidance.copy_from_backbone(unet)  # ControlNet-style start: a copy of the frozen encoder
        self.guidance = guidance
        if preprocess is None:
            preprocess = PreprocessModule(config.preprocess_channels, config.block_out_channels[0])
            preprocess.to(device=_device_of(unet), dtype=_dtype_of(unet))
        self.preprocess = preprocess
        self.noise_scheduler_config = dict(SD15_NOISE_SCHEDULER_CONFIG)
        for frozen in self.frozen_modules():
            frozen.requires_grad_(False)
            frozen.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: FRDMConfig, *, device=None, dtype=None) -> HaineiFRDM:
        """Every network with random weights (``device="meta"`` for sizes without memory)."""
        with torch.device(device if device is not None else "cpu"):
            unet2d = UNet2DConditionModel(**config.unet_config())
            adapter = MotionAdapter(**config.motion_adapter_config())
            unet = UNetMotionModel.from_unet2d(unet2d, adapter)
            del unet2d, adapter
            vae = AutoencoderKL(**config.vae_config())
            text_encoder = CLIPTextModel(CLIPTextConfig(**config.text_config()))
            image_encoder = CLIPVisionModel(CLIPVisionConfig(**config.vision_config()))
            model = cls(
                config,
                unet=unet,
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tiny_tokenizer(config.text_max_length),
                image_encoder=image_encoder,
            )
        if dtype is not None:
            model.to(dtype=dtype)
        return model

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward, block by block, in the guidance network and the frozen UNet
        (gradients flow through the UNet's decoder to the guidance residuals even though its weights are frozen)."""
        self.guidance.gradient_checkpointing = True
        self.unet.enable_gradient_checkpointing()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.text_encoder, self.image_encoder]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The parts FRDM trains and saves (``save_frdm_weights``): preprocess and guidance (with its
        fusion modules)."""
        return {"preprocess": self.preprocess, "guidance": self.guidance}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters()]

    def train(self, mode: bool = True) -> HaineiFRDM:
        super().train(mode)
        for frozen in self.frozen_modules():  # frozen networks stay in inference mode
            frozen.eval()
        return self

    @property
    def num_skip_connections(self) -> int:
        """The frozen UNet's down-path outputs that take a guidance residual: conv_in, each resnet, each
        downsampler (12 for SD1.5)."""
        return 1 + sum(len(b.resnets) + len(b.downsamplers or ()) for b in self.unet.down_blocks)

    @property
    def device(self) -> torch.device:
        return _device_of(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        return _dtype_of(self.unet)

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> Tensor:
        """Captions -> CLIP text last hidden states (B, L, D_text), padded to the tokenizer's max length."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.config.text_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def encode_global_frame(self, frames: Tensor) -> Tensor:
        """Full frames (B, F, 3, h, w) in [0, 1] -> CLIP patch tokens (B, F, N, D_vis).

        Patch tokens, not the CLS token: the paper keeps them for the positional information they carry.
        Use :meth:`encode_global_conditioning`, which resizes the frame first, unless the frames already are
        the global frames.
        """
        b, f = frames.shape[:2]
        size = self.config.vision_image_size
        x = resize_global_frame(frames.flatten(0, 1).to(self.image_encoder.device), size)
        mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        pixels = ((x - mean) / std).to(self.image_encoder.dtype)
        tokens = self.image_encoder(pixel_values=pixels).last_hidden_state[:, 1:]
        return tokens.unflatten(0, (b, f))

    @torch.no_grad()
    def encode_global_conditioning(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """The global-frame conditioning, the one recipe training and inference share.

        Degraded full frames (B, F, 3, H, W) in [0, 1], any size (or already resized by
        :func:`resize_global_frame`, as the training dataset does) -> (CLIP patch tokens (B, F, N, D_vis) for
        GlobalFrameFusion, VAE latents (B, F, 4, s/8, s/8) float32 for the frequency reference), both of the
        frame resized to ``config.global_frame_size`` (s). The VAE encodes one frame per call: a frame's
        latent must not depend on how many frames share its batch (16 in a training item, a window's count at
        inference), and memory stays bounded.
        """
        b, f = frames.shape[:2]
        x = resize_global_frame(frames, self.config.global_frame_size)
        tokens = self.encode_global_frame(x)
        flat = x.flatten(0, 1)
        latents = torch.cat([self.encode_latents(flat[i : i + 1, None]) for i in range(flat.shape[0])])
        return tokens, latents.float().view(b, f, *latents.shape[2:])

    def encode_latents(self, images: Tensor, *, sample: bool = False, generator=None) -> Tensor:
        """(B, F, 3, H, W) in [0, 1] -> VAE-scaled latents (B, F, 4, H/8, W/8); the posterior mean unless
        sample."""
        b, f = images.shape[:2]
        x = images.flatten(0, 1).to(self.vae.device, self.vae.dtype) * 2 - 1
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return (z * self.vae.config.scaling_factor).unflatten(0, (b, f))

    def decode_latents(self, latents: Tensor) -> Tensor:
        """VAE-scaled latents (B, F, 4, h, w) -> images (B, F, 3, 8h, 8w) in [0, 1] (not clamped: grads flow).

        Gradients flow to the latents (the defect loss, Eq. 5), never into the frozen VAE's weights.
        """
        b, f = latents.shape[:2]
        z = latents.flatten(0, 1).to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(z).sample
        return ((images + 1) / 2).unflatten(0, (b, f))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        noisy_latents: Tensor,
        timesteps: Tensor,
        *,
        degraded: Tensor,
        degraded_latents: Tensor,
        prompt_embeds: Tensor,
        global_tokens: Tensor,
        global_latents: Tensor,
        boxes: Tensor,
    ) -> FRDMOutput:
        b, f = noisy_latents.shape[:2]
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(b)
        condition, preprocess_images = self.preprocess(degraded)
        down_residuals, mid_residual = self.guidance(
            noisy_latents,
            timesteps,
            condition=condition,
            prompt_embeds=prompt_embeds,
            global_tokens=global_tokens,
            degraded_latents=degraded_latents,
            global_latents=global_latents,
            boxes=boxes,
        )
        # diffusers pairs these with the UNet's skip connections by zip(): a count that differs would be
        # truncated silently (some skips unguided), so it is checked here.
        expected = self.num_skip_connections
        if len(down_residuals) != expected:
            raise ValueError(
                f"the guidance network gave {len(down_residuals)} down-block residuals; the frozen UNet has "
                f"{expected} skip connections (the two networks are built from different configurations)"
            )
        unet_dtype = self.unet.dtype
        sample = noisy_latents.to(unet_dtype).permute(0, 2, 1, 3, 4)  # UNetMotionModel takes (B, C, F, h, w)
        pred = self.unet(
            sample,
            timesteps,
            encoder_hidden_states=_per_frame(prompt_embeds, f).to(unet_dtype),
            down_block_additional_residuals=tuple(r.to(unet_dtype) for r in down_residuals),
            mid_block_additional_residual=mid_residual.to(unet_dtype),
        ).sample
        return FRDMOutput(noise_pred=pred.permute(0, 2, 1, 3, 4), preprocess_images=preprocess_images)

    def backbone_forward(self, noisy_latents: Tensor, timesteps: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The frozen UNet alone (no guidance): (B, F, 4, h, w) -> noise prediction of the same shape."""
        f = noisy_latents.shape[1]
        sample = noisy_latents.to(self.unet.dtype).permute(0, 2, 1, 3, 4)
        context = _per_frame(prompt_embeds, f).to(self.unet.dtype)
        pred = self.unet(sample, timesteps, encoder_hidden_states=context).sample
        return pred.permute(0, 2, 1, 3, 4)


def _per_frame(prompt_embeds: Tensor, num_frames: int) -> Tensor:
    # UNetMotionModel runs its spatial layers on (B*F) images and expects the text context repeated per frame.
    return prompt_embeds.repeat_interleave(num_frames, dim=0)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
