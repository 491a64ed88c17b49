"""STEMBasisEstimate: installs STEM-SA (or a baseline video context) on a clone of a MODEL."""
from ..stem_core.patch import CONTEXTS, VARIANTS, STEMSettings, VideoAttentionPatch, install_plan, parse_layers
from .compat import category, require_sd15


def apply_stem_patch(model, settings: STEMSettings):
    """A clone of `model` with the patch installed; `model` itself is left untouched."""
    patch, replaces = install_plan(settings)
    m = model.clone()
    m.set_model_attn1_patch(patch)
    for (block_name, number), fn in replaces.items():
        m.set_model_attn1_replace(fn, block_name, number, 0)
    return m


def find_stem_patch(model):
    """The VideoAttentionPatch installed on this MODEL (this clone's own copy), or None."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    for p in patches.get("attn1_patch", []):
        if isinstance(p, VideoAttentionPatch):
            return p
    return None


class STEMBasisEstimate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5 model. It is cloned; the input stays unpatched."}),
            "attention_context": (list(CONTEXTS), {"default": "stem", "tooltip":
                "stem: every frame attends to K bases estimated by EM over ALL frames (the paper). "
                "per_frame: plain per-frame DDIM. two_frame: frame n with the middle frame (FateZero). "
                "all_frame: extended attention over every frame (slow, memory O(N^2))."}),
            "num_bases": ("INT", {"default": 256, "min": 1, "max": 4096, "tooltip":
                "K, the number of bases of the whole video (paper: 256; 128 is faster, 512 barely better)."}),
            "iterations": ("INT", {"default": 3, "min": 0, "max": 50, "tooltip":
                "R, EM iterations per layer and step (paper: 3). With warm start 1-2 are often enough."}),
            "tau": ("FLOAT", {"default": 0.05, "min": 1e-4, "max": 10.0, "step": 0.001, "tooltip":
                "Temperature of the E-step softmax (paper: 0.05; towards 0 it becomes k-means)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip":
                "Seed of the bases' initialisation: the same seed gives the same bases."}),
            "variant": (list(VARIANTS), {"default": "paper", "tooltip":
                "paper: EM on the layer input X (Eq. 8-11). released: the authors' code, EM per head on the "
                "projected keys with tau 0.01 and 5 iterations suggested."}),
            "layers": ("STRING", {"default": "all", "tooltip":
                "Which of the 16 self-attention layers use the video context: all, encoder, middle, decoder, "
                "or names like input_1, output_11 (comma separated)."}),
            "warm_start": ("BOOLEAN", {"default": False, "tooltip":
                "Start each layer's EM from its bases of the previous step of the same run. Off by default: on "
                "test features warm bases drifted from the cold fixed point (bench/README.md); on with iterations 1 "
                "is the fast setting."}),
            "init": (["tokens", "gaussian"], {"default": "tokens", "tooltip":
                "tokens: K distinct tokens of the video (seeded). gaussian: draws from the features' "
                "per-channel statistics (released-code style)."}),
            "chunk_tokens": ("INT", {"default": 0, "min": 0, "max": 1 << 24, "tooltip":
                "Tokens per EM chunk (0 = automatic). Chunking bounds memory for long videos; results are "
                "the same."}),
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched clone: every self-attention layer chosen reads a whole-video context.",)
    FUNCTION = "patch"
    CATEGORY = category("inversion")
    TITLE = "STEM Basis Estimate (video attention)"
    DESCRIPTION = "Installs STEM self-attention (EM bases of the whole video) or a baseline context on a model clone."

    def patch(self, model, attention_context, num_bases, iterations, tau, seed, variant, layers, warm_start,
              init, chunk_tokens):
        require_sd15(model, self.TITLE)
        settings = STEMSettings(context=attention_context, variant=variant, num_bases=num_bases,
                                iterations=iterations, tau=tau, seed=seed, init=init, warm_start=warm_start,
                                chunk_tokens=chunk_tokens or None, layers=parse_layers(layers)).validated()
        return (apply_stem_patch(model, settings),)


NODE_CLASS_MAPPINGS = {"STEMBasisEstimate": STEMBasisEstimate}
