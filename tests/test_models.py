"""Model layer: tiny offline checkpoints, load from a saved dir, processor, CUDA-only paths."""

import pytest
import torch
from PIL import Image

from msr_utils import models, prompts, tiny


def image(w=120, h=60):
    return Image.new("RGB", (w, h), (200, 30, 30))


def files_bytes(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def test_tiny_build_is_deterministic_and_small(tiny_dir, tmp_path):
    again = tiny.build(tmp_path / "again", seed=0)
    other = tiny.build(tmp_path / "other", seed=1)
    for kind, sub in [("vlm", tiny.VLM_DIR), ("lm", tiny.LM_DIR)]:
        first = files_bytes(tiny_dir / sub)
        assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(first)
        assert first == files_bytes(again[kind])
        assert sum(map(len, first.values())) < 2_500_000
        assert files_bytes(other[kind])["model.safetensors"] != first["model.safetensors"]
        assert files_bytes(other[kind])["tokenizer.json"] == first["tokenizer.json"]


def test_tiny_cli(tmp_path, capsys):
    tiny.main([str(tmp_path), "--seed", "3"])
    assert (tmp_path / "tiny-vlm" / "model.safetensors").is_file()
    assert (tmp_path / "tiny-lm" / "tokenizer.json").is_file()
    assert "tiny-vlm" in capsys.readouterr().out


def test_tokenizer_single_tokens_and_chat_template(tiny_dir):
    tok = models.load(tiny_dir / tiny.LM_DIR, kind="lm").tokenizer
    for word in ["Yes", "No", " Yes", " No", "[INST]", "[/INST]", "<image>"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    msgs = prompts.user_message("Is it good?")
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Yes"}], tokenize=False)
    assert prompt == "<s>[INST] Is it good? [/INST]"
    assert full == prompt + " Yes</s>"
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    assert tok.model_input_names == ["input_ids", "attention_mask"]


def greedy(model, inputs, n=12):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False)


def test_vlm_from_saved_dir_matches_in_memory(tmp_path):
    tokenizer = tiny.train_tokenizer()
    model, processor = tiny.build_vlm(tokenizer, seed=7)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = models.load(tmp_path, kind="vlm")
    assert loaded.device.type == "cpu" and loaded.model.dtype == torch.float32
    assert not loaded.model.training and loaded.model_ref == str(tmp_path)
    text = loaded.processor.apply_chat_template(prompts.user_message("Describe it.", True),
                                                add_generation_prompt=True, tokenize=False)
    inputs = loaded.processor(text=[text], images=[image()], return_tensors="pt")
    expected = greedy(model, inputs)
    assert torch.equal(greedy(loaded.model, inputs), expected)
    assert expected.shape[1] > inputs["input_ids"].shape[1]


def test_lm_from_saved_dir_matches_in_memory(tmp_path):
    tokenizer = tiny.train_tokenizer()
    model = tiny.build_lm(tokenizer, seed=7)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path), kind="lm")
    inputs = loaded.tokenizer(["<s>[INST] a longer prompt here [/INST]", "<s>[INST] Hi [/INST]"],
                              padding=True, add_special_tokens=False, return_tensors="pt")
    assert (inputs["attention_mask"][1, 0] == 0) and (inputs["attention_mask"][1, -1] == 1)  # left pad
    assert torch.equal(greedy(loaded.model, inputs), greedy(model, inputs))


def test_processor_round_trip_with_image(tiny_dir):
    loaded = models.load(tiny_dir / tiny.VLM_DIR, kind="vlm")
    proc = loaded.processor
    assert type(proc.image_processor).__name__ == "LlavaNextImageProcessorPil"
    with_image = proc.apply_chat_template(prompts.user_message("A red cover.", True),
                                          add_generation_prompt=True, tokenize=False)
    text_only = proc.apply_chat_template(prompts.user_message("Only text."),
                                         add_generation_prompt=True, tokenize=False)
    assert with_image == "<s>[INST] <image>\nA red cover. [/INST]"
    inputs = proc(text=[with_image, text_only], images=[image()], padding=True,
                  add_special_tokens=False, return_tensors="pt")
    image_id = loaded.model.config.image_token_index
    n_image = (inputs["input_ids"] == image_id).sum(1).tolist()
    assert n_image[0] > 1 and n_image[1] == 0  # <image> expanded to the anyres feature count
    assert inputs["pixel_values"].shape[0] == 1 and inputs["image_sizes"].tolist() == [[60, 120]]
    kept = inputs["input_ids"][0][inputs["input_ids"][0] != image_id]
    assert proc.tokenizer.decode(kept, skip_special_tokens=True).strip() == "A red cover."
    with torch.inference_mode():  # the model accepts exactly that many image features
        logits = loaded.model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape


def test_4bit_without_cuda_raises_clear_error(tiny_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"(?s)needs CUDA.*tiny-vlm|tiny-vlm.*needs CUDA"):
        models.load(tiny_dir / tiny.VLM_DIR, kind="vlm", quantization="4bit")


def test_bad_arguments_name_the_parameter(tiny_dir):
    with pytest.raises(ValueError, match="kind="):
        models.load(tiny_dir / tiny.VLM_DIR, kind="seq2seq")
    with pytest.raises(ValueError, match="quantization="):
        models.load(tiny_dir / tiny.VLM_DIR, kind="vlm", quantization="3bit")


def test_unknown_model_offline_names_id_and_download(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "is_offline_mode", lambda: True)
    with pytest.raises(models.ModelLoadError, match=r"no-such-org/no-such-model.*hf download no-such-org"):
        models.load("no-such-org/no-such-model", kind="vlm")
    with pytest.raises(models.ModelLoadError, match="not a model directory"):
        models.load(str(tmp_path / "missing" / "dir"), kind="lm")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_and_4bit(tiny_dir):
    plain = models.load(tiny_dir / tiny.LM_DIR, kind="lm")
    assert plain.device.type == "cuda" and plain.model.dtype in (torch.bfloat16, torch.float16)
    quant = models.load(tiny_dir / tiny.LM_DIR, kind="lm", quantization="4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in quant.model.modules())
    inputs = quant.tokenizer(["<s>[INST] Hi [/INST]"], add_special_tokens=False,
                             return_tensors="pt").to("cuda")
    assert greedy(quant.model, inputs, 4).shape[1] > inputs["input_ids"].shape[1]
