"""UnityVideoTransformer3DModel as a diffusers model: Wan compatibility, options, the diffusers machinery."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, random_inputs, randomize_parameters, relative_error
from diffusers import FirstBlockCacheConfig, WanTransformer3DModel

from unityvideo_diffusers import UnityVideoTransformer3DModel


def _wan():
    torch.manual_seed(1)
    return randomize_parameters(WanTransformer3DModel(patch_size=(1, 2, 2), **TINY), seed=1).eval()


def _rgb_args(inputs):
    return dict(
        hidden_states=inputs["hidden_states"],
        timestep=inputs["timestep"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
    )


# ---------------------------------------------------------------- from_wan / Wan compatibility


@torch.no_grad()
def test_from_wan_equals_wan_on_rgb_alone():
    wan = _wan()
    inputs = random_inputs()
    expected = wan(**_rgb_args(inputs)).sample
    model = UnityVideoTransformer3DModel.from_wan(copy.deepcopy(wan))
    out = model(**_rgb_args(inputs))
    assert out.modality_sample is None
    # diffusers' float32 sinusoid vs our float64 one: ~1e-6 apart (the authors compute the sinusoid in the timestep's float32)
    assert relative_error(out.sample, expected) < 1e-5


@torch.no_grad()
def test_from_wan_equals_wan_with_per_token_timesteps():
    wan = _wan()
    inputs = random_inputs()
    tokens = 3 * 2 * 3
    timestep = torch.rand(2, tokens) * 1000
    timestep[:, :6] = 0  # a clean first frame, as Wan2.2 TI2V does
    args = {**_rgb_args(inputs), "timestep": timestep}
    expected = wan(**args).sample
    out = UnityVideoTransformer3DModel.from_wan(copy.deepcopy(wan))(**args).sample
    assert relative_error(out, expected) < 1e-5


def test_from_wan_initialises_added_modules_as_the_authors():
    wan = _wan()
    model = UnityVideoTransformer3DModel.from_wan(copy.deepcopy(wan), modalities=["depth", "flow"])
    assert list(model.config.modalities) == ["depth", "raft"]
    assert torch.equal(model.control_encoder.patch_embedding.weight, wan.patch_embedding.weight)
    assert torch.equal(model.modality_proj_out.weight, wan.proj_out.weight)
    assert torch.equal(model.modality_scale_shift_table, wan.scale_shift_table)
    assert not model.control_encoder.proj_in.weight.any() and not model.control_encoder.proj_in.bias.any()
    assert all(not p.any() for p in model.control_encoder.modality_embeddings.values())
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())


@torch.no_grad()
def test_fresh_modality_stream_ignores_its_input():
    """With the authors' zero projection, the modality latent cannot influence anything."""
    model = UnityVideoTransformer3DModel.from_wan(_wan())
    inputs = random_inputs()
    out_a = model(**inputs, modality="depth")
    out_b = model(
        **{**inputs, "modality_hidden_states": torch.randn_like(inputs["modality_hidden_states"])}, modality="depth"
    )
    assert torch.equal(out_a.sample, out_b.sample) and torch.equal(out_a.modality_sample, out_b.modality_sample)


def test_wan_lora_loads_directly():
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    wan = _wan()
    model = UnityVideoTransformer3DModel.from_wan(copy.deepcopy(wan))
    wan.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.2"], init_lora_weights=False
        )
    )
    lora_state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(wan).items()}
    model.load_lora_adapter(lora_state, prefix="transformer", adapter_name="wan_lora")
    inputs = random_inputs()
    with torch.no_grad():
        expected = wan(**_rgb_args(inputs)).sample
        out = model(**_rgb_args(inputs)).sample
    assert relative_error(out, expected) < 1e-5


# ---------------------------------------------------------------- timesteps, batches, modalities


@torch.no_grad()
def test_per_token_timesteps_equal_per_sample(tiny_model):
    inputs = random_inputs()
    expected = tiny_model(**inputs, modality="depth")
    tokens = 3 * 2 * 3
    for width in (tokens, 2 * tokens):
        per_token = inputs["timestep"][:, None].expand(2, width).contiguous()
        out = tiny_model(**{**inputs, "timestep": per_token}, modality="depth")
        assert relative_error(out.sample, expected.sample) < 1e-6
        assert relative_error(out.modality_sample, expected.modality_sample) < 1e-6


@torch.no_grad()
def test_per_stream_token_timesteps_reach_each_stream(tiny_model):
    """(B, 2N) timesteps: the RGB half drives the RGB head, the modality half the modality head."""
    inputs = random_inputs(batch=1)
    tokens = 3 * 2 * 3
    timestep = torch.cat([torch.full((1, tokens), 100.0), torch.full((1, tokens), 900.0)], dim=1)
    out = tiny_model(**{**inputs, "timestep": timestep}, modality="depth")
    same_everywhere = tiny_model(**{**inputs, "timestep": torch.tensor([100.0])}, modality="depth")
    assert not torch.allclose(out.sample, same_everywhere.sample)


@torch.no_grad()
def test_mixed_modalities_in_one_batch(tiny_model):
    inputs = random_inputs()
    names = ["segmentation", "raft"]
    batched = tiny_model(**inputs, modality=names)
    ids = tiny_model(**inputs, modality=torch.tensor([tiny_model.config.modalities.index(n) for n in names]))
    assert torch.equal(batched.modality_sample, ids.modality_sample)
    for index, name in enumerate(names):
        single = tiny_model(**{k: v[index : index + 1] for k, v in inputs.items()}, modality=name)
        assert relative_error(batched.sample[index : index + 1], single.sample) < 1e-6
        assert relative_error(batched.modality_sample[index : index + 1], single.modality_sample) < 1e-6


@torch.no_grad()
def test_modality_identity_changes_output(tiny_model):
    inputs = random_inputs()
    depth = tiny_model(**inputs, modality="depth").modality_sample
    raft = tiny_model(**inputs, modality="flow").modality_sample  # alias of raft
    assert not torch.allclose(depth, raft)


def test_return_tuple(tiny_model):
    with torch.no_grad():
        sample, modality_sample = tiny_model(**random_inputs(), modality="depth", return_dict=False)
    assert sample.shape == modality_sample.shape == (2, 4, 3, 4, 6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(modality="normals"), "This model has no modality .normals.; it has: depth, densepose"),
        (
            dict(hidden_states=torch.randn(2, 4, 3, 5, 6), modality_hidden_states=torch.randn(2, 4, 3, 5, 6)),
            "patch grid",
        ),
        (
            dict(hidden_states=torch.randn(2, 5, 3, 4, 6), modality_hidden_states=torch.randn(2, 5, 3, 4, 6)),
            r"\(B, 4, F, H, W\)",
        ),
        (dict(modality_hidden_states=torch.randn(2, 4, 3, 4, 8)), "must have the shape"),
        (dict(timestep=torch.rand(3)), "timestep"),
        (dict(encoder_hidden_states=torch.randn(2, 7, 8)), "encoder_hidden_states"),
        (dict(modality_encoder_hidden_states=torch.randn(2, 9, 16)), "same length"),
        (dict(modality=["depth"]), "1 modality names for a batch of 2"),
        (dict(task="inpainting"), "Unknown task .inpainting.. Known: joint, control, perception"),
    ],
)
def test_bad_inputs_are_named(tiny_model, change, message):
    kwargs = {**random_inputs(), "modality": "depth", **change}
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


# ---------------------------------------------------------------- options beyond the release


@torch.no_grad()
def test_options_change_nothing_until_trained(tiny_model):
    with_options = UnityVideoTransformer3DModel(**TINY, modality_adaln=True, task_embedding=True).eval()
    missing, unexpected = with_options.load_state_dict(tiny_model.state_dict(), strict=False)
    assert not unexpected and all("modality_scale_shift_table" in k or "task_embedder" in k for k in missing)
    inputs = random_inputs()
    expected = tiny_model(**inputs, modality=["depth", "skeleton"])
    out = with_options(**inputs, modality=["depth", "skeleton"], task="text2all")
    assert torch.equal(out.sample, expected.sample) and torch.equal(out.modality_sample, expected.modality_sample)

    # once trained, each option acts: per-modality AdaLN rows on modality tokens, task rows on the time embedding
    with_options.blocks[0].modality_scale_shift_table.data[0].normal_()
    adaln = with_options(**inputs, modality=["depth", "skeleton"], task="joint")
    assert not torch.allclose(adaln.modality_sample[0], expected.modality_sample[0])
    assert torch.equal(adaln.modality_sample[1], expected.modality_sample[1])  # skeleton rows still zero
    with_options.task_embedder.weight.data[1].normal_()
    control = with_options(**inputs, modality=["depth", "skeleton"], task="control")
    joint = with_options(**inputs, modality=["depth", "skeleton"], task="joint")
    assert not torch.allclose(control.sample, joint.sample)


@torch.no_grad()
def test_add_modality(tiny_model, tmp_path):
    inputs = random_inputs()
    without_identity = tiny_model(**inputs, modality=None)
    tiny_model.add_modality("normal")
    assert tiny_model.config.modalities[-1] == "normal"
    with pytest.raises(ValueError, match="already"):
        tiny_model.add_modality("normal")
    out = tiny_model(**inputs, modality="normal")
    assert torch.equal(out.modality_sample, without_identity.modality_sample)
    tiny_model.control_encoder.modality_embeddings["normal"].data.normal_()
    tiny_model.save_pretrained(tmp_path)
    reloaded = UnityVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    assert torch.equal(
        reloaded(**inputs, modality="normal").modality_sample, tiny_model(**inputs, modality="normal").modality_sample
    )


def test_add_modality_grows_adaln_tables():
    model = UnityVideoTransformer3DModel(**TINY, modality_adaln=True)
    model.add_modality("normal")
    assert all(block.modality_scale_shift_table.shape[0] == 6 for block in model.blocks)


# ---------------------------------------------------------------- diffusers machinery


@torch.no_grad()
def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = UnityVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    inputs = random_inputs()
    assert torch.equal(reloaded(**inputs, modality="depth").sample, tiny_model(**inputs, modality="depth").sample)
    bf16 = UnityVideoTransformer3DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert bf16.blocks[0].scale_shift_table.dtype == torch.float32
    assert bf16.modality_scale_shift_table.dtype == torch.float32
    out = bf16(**{k: v.bfloat16() for k, v in inputs.items()}, modality="depth")
    assert out.sample.dtype == torch.bfloat16 and torch.isfinite(out.sample.float()).all()


def test_gradient_checkpointing_same_gradients(tiny_model):
    inputs = random_inputs()

    def gradients():
        tiny_model.zero_grad()
        out = tiny_model(**inputs, modality="depth")
        (out.sample.square().mean() + out.modality_sample.square().mean()).backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    plain = gradients()
    tiny_model.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and "control_encoder.proj_in.weight" in plain
    assert all(torch.allclose(plain[n], checkpointed[n], rtol=1e-5, atol=1e-7) for n in plain)


@torch.no_grad()
def test_attention_backend_and_offload_and_layerwise_casting(tiny_model):
    inputs = random_inputs()
    expected = tiny_model(**inputs, modality="depth").sample
    tiny_model.set_attention_backend("native")
    assert relative_error(tiny_model(**inputs, modality="depth").sample, expected) < 1e-6
    tiny_model.reset_attention_backend()

    offloaded = copy.deepcopy(tiny_model)
    offloaded.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert relative_error(offloaded(**inputs, modality="depth").sample, expected) < 1e-6

    cast = copy.deepcopy(tiny_model)
    cast.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    assert cast.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert cast.control_encoder.modality_embeddings["depth"].dtype == torch.float32
    assert relative_error(cast(**inputs, modality="depth").sample, expected) < 5e-2


@torch.no_grad()
def test_first_block_cache(tiny_model):
    inputs = random_inputs()
    expected = tiny_model(**inputs, modality="depth").sample
    tiny_model.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    with tiny_model.cache_context("cond"):
        first = tiny_model(**inputs, modality="depth").sample
        nudged = {**inputs, "hidden_states": inputs["hidden_states"] + 1e-4}
        cached = tiny_model(**nudged, modality="depth").sample
    assert relative_error(first, expected) < 1e-6
    # the second call reused the cached residual of the later blocks: it is not a fresh forward
    fresh = copy.deepcopy(tiny_model)
    fresh.disable_cache()
    assert not torch.equal(cached, fresh(**nudged, modality="depth").sample)
    tiny_model.disable_cache()


@torch.no_grad()
def test_compile_repeated_blocks(tiny_model):
    inputs = random_inputs()
    expected = tiny_model(**inputs, modality="depth").sample
    torch._dynamo.reset()
    tiny_model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    assert relative_error(tiny_model(**inputs, modality="depth").sample, expected) < 1e-6


def test_peft_adapter_trains_only_adapter(tiny_model):
    from peft import LoraConfig

    tiny_model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
