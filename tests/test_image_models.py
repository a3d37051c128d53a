"""Image observations of any size and layout, without processes: each travels as
uint8 CHW (VectorEnv's layout conversion, pixel for pixel), through a fragment's
encode and decode, into a CNN sized from the observation (small_cnn below 36x36,
nature_cnn from there) that runs forward and backward; refusals say why."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError



from services.eval.evaluate import evaluate  # noqa: E402
from shared.config import RunConfig  # noqa: E402
from shared.envs import EnvOptions, EnvRefused, VectorEnv, check_env, env_spec  # noqa: E402
from shared.fragment import Fragment, decode_fragment, encode_fragment  # noqa: E402
from shared.models import MAX_FEATURE_SIDE, build_model, model_kind  # noqa: E402
from tests.pixel_envs import PixelCatch  # noqa: E402

CATCH = "tests.pixel_envs:PixelCatch-v0"
RGB = "tests.pixel_envs:PixelCatchRGB-v0"
T, N = 5, 3


def to_chw(raw: np.ndarray, layout: str) -> np.ndarray:
    """What the trainer must see of one raw observation: uint8 C x H x W."""
    return {"hw": lambda a: a[None], "hwc": lambda a: a.transpose(2, 0, 1), "rgb": lambda a: a.transpose(2, 0, 1),
            "chw": lambda a: a}[layout](raw)


CASES = [  # env id, env_kwargs, the raw observation's shape, CHW shape, the model auto picks
    (CATCH, {}, (10, 5), (1, 10, 5), "small_cnn"),
    (CATCH, {"layout": "hwc"}, (10, 5, 1), (1, 10, 5), "small_cnn"),
    (RGB, {}, (12, 10, 3), (3, 12, 10), "small_cnn"),
    (CATCH, {"layout": "chw", "rows": 4, "cols": 6}, (3, 4, 6), (3, 4, 6), "small_cnn"),
    (CATCH, {"rows": 7, "cols": 5, "scale": 7}, (49, 35), (1, 49, 35), "small_cnn"),  # one side under 36
    (CATCH, {"rows": 9, "cols": 9, "scale": 4, "layout": "rgb"}, (36, 36, 3), (3, 36, 36), "nature_cnn"),
    (CATCH, {"rows": 12, "cols": 9, "scale": 8}, (96, 72), (1, 96, 72), "nature_cnn"),
    (CATCH, {"rows": 12, "cols": 9, "scale": 8, "layout": "rgb"}, (96, 72, 3), (3, 96, 72), "nature_cnn"),
    (CATCH, {"rows": 12, "cols": 9, "scale": 8, "layout": "chw"}, (3, 96, 72), (3, 96, 72), "nature_cnn"),
]


@pytest.mark.parametrize("env_id,kwargs,raw_shape,chw,kind", CASES,
                         ids=[f"{'x'.join(map(str, c[2]))}" for c in CASES])
def test_image_travels_as_uint8_chw_into_a_cnn_sized_from_it(env_id, kwargs, raw_shape, chw, kind):
    torch.manual_seed(0)
    layout = kwargs.get("layout", "rgb" if env_id == RGB else "hw")
    cfg = RunConfig(env_id=env_id, env_kwargs=kwargs, max_agent_steps=1000)  # validates: builds the env
    spec = env_spec(cfg)
    assert spec.obs_shape == chw and spec.obs_dtype == "uint8" and spec.image and spec.num_actions == 3
    assert spec.frame_stack == 0 and not spec.clip_rewards

    # VectorEnv: env i is seeded with seed + i, so a plain env reset alike shows the raw pixels.
    venv = VectorEnv(cfg, N, seed=7)
    own = [PixelCatch(**(({"rows": 12, "cols": 10, "layout": "rgb"} if env_id == RGB else {}) | kwargs))
           for _ in range(N)]
    raw = [e.reset(seed=7 + i)[0] for i, e in enumerate(own)]
    assert raw[0].shape == raw_shape and raw[0].dtype == np.uint8
    rng = np.random.default_rng(0)
    obs = np.empty((T + 1, N, *chw), np.uint8)
    obs[0] = venv.reset()
    np.testing.assert_array_equal(obs[0], np.stack([to_chw(r, layout) for r in raw]))
    actions = rng.integers(0, 3, (T, N))
    rewards, dones = np.zeros((T, N), np.float32), np.zeros((T, N), np.uint8)
    for t in range(T):
        obs[t + 1], rewards[t], term, trunc, _ = venv.step(actions[t])
        dones[t] = term | trunc
        for i, e in enumerate(own):
            raw_i, _, done_i, _, _ = e.step(int(actions[t, i]))
            if done_i:
                raw_i = e.reset()[0]
            np.testing.assert_array_equal(obs[t + 1, i], to_chw(raw_i, layout))
    venv.close()

    # The wire: a fragment of these observations decodes to the same arrays, checked against the spec.
    frag = Fragment("run-1", "actor-1", 3, obs, actions.astype(np.int32), np.zeros((T, N, 3), np.float32),
                    rewards, dones)
    back = decode_fragment(encode_fragment(frag), "run-1", spec, T)
    np.testing.assert_array_equal(back.obs, obs)
    assert back.obs.dtype == np.uint8

    # The model: chosen by size, sized from the observation, forward and backward.
    assert model_kind(cfg, spec) == kind
    model = build_model(cfg, spec)
    assert type(model.encoder).__name__ == {"small_cnn": "SmallCNN", "nature_cnn": "NatureCNN"}[kind]
    logits, value = model(torch.tensor(back.obs.reshape((T + 1) * N, *chw)))
    assert logits.shape == ((T + 1) * N, 3) and value.shape == ((T + 1) * N,)
    (logits.logsumexp(-1).mean() + value.pow(2).mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("model", ["small_cnn", "impala_resnet"])
def test_any_image_model_on_the_smallest_image(model):
    """10x5: the small CNN keeps every pixel (stride 1), the ResNet pools it down to 2x1."""
    cfg = RunConfig(env_id=CATCH, model=model, max_agent_steps=1000)
    spec = env_spec(cfg)
    m = build_model(cfg, spec)
    logits, _ = m(torch.zeros(2, *spec.obs_shape, dtype=torch.uint8))
    assert logits.shape == (2, 3)


def test_a_large_frame_gets_a_bounded_model():
    """A 400x600 RGB frame (the size of CartPole's render): the Nature CNN's map is
    pooled down to MAX_FEATURE_SIDE, so its dense layer stays a few million weights
    (not 107M: 430 MB per weights publication)."""
    cfg = RunConfig(env_id=CATCH, env_kwargs={"rows": 50, "cols": 75, "scale": 8, "layout": "rgb"},
                    max_agent_steps=1000)
    spec = env_spec(cfg)
    assert spec.obs_shape == (3, 400, 600) and model_kind(cfg, spec) == "nature_cnn"
    model = build_model(cfg, spec)
    assert sum(p.numel() for p in model.parameters()) < 6_000_000
    assert model.encoder.fc[0].in_features == 64 * MAX_FEATURE_SIDE * MAX_FEATURE_SIDE
    logits, _ = model(torch.zeros(2, *spec.obs_shape, dtype=torch.uint8))
    assert logits.shape == (2, 3)


def test_84x84_frames_keep_their_model():
    """The pool is only there for large maps: the Atari models' parameters are unchanged."""
    cfg = RunConfig(env_id=CATCH, env_kwargs={"rows": 21, "cols": 21, "scale": 4}, max_agent_steps=1000)
    spec = env_spec(cfg)
    names = {k: tuple(v.shape) for k, v in build_model(cfg, spec).encoder.state_dict().items()}
    assert names["fc.0.weight"] == (512, 64 * 7 * 7) and len(names) == 8


def test_latent_ae_on_84x84_rgb():
    cfg = RunConfig(env_id=CATCH, env_kwargs={"rows": 21, "cols": 21, "scale": 4, "layout": "rgb"},
                    latent_ae=True, max_agent_steps=1000)
    model = build_model(cfg, env_spec(cfg))
    logits, _, recon = model.forward_aux(torch.zeros(2, 3, 84, 84, dtype=torch.uint8))
    assert logits.shape == (2, 3) and recon is not None and torch.isfinite(recon)


def test_a_float_box_is_a_vector_not_an_image():
    """Only uint8 is an image: a float HxWx1 Box is flattened for the MLP (it used to
    keep its 3 axes and pass for a CHW image, rows taken as channels)."""
    cfg = RunConfig(env_id=CATCH, env_kwargs={"layout": "float"}, max_agent_steps=1000)
    spec = env_spec(cfg)
    assert spec.obs_shape == (50,) and spec.obs_dtype == "float32" and not spec.image
    assert model_kind(cfg, spec) == "mlp"
    venv = VectorEnv(cfg, 2, seed=0)
    obs = venv.reset()
    assert obs.shape == (2, 50) and obs.dtype == np.float32 and obs.max() == 1.0
    venv.close()
    logits, _ = build_model(cfg, spec)(torch.from_numpy(obs))
    assert logits.shape == (2, 3)


def refusal(**fields) -> str:
    """The 422's message for these RunConfig fields, with the field it names."""
    with pytest.raises(ValidationError) as e:
        RunConfig(**({"max_agent_steps": 1000} | fields))
    (err,) = e.value.errors()
    return f"{err['loc'][-1]}: {err['msg']}"


def test_refusals_name_the_reason():
    msg = refusal(env_id=CATCH, model="nature_cnn")
    assert msg.startswith("model:") and "at least 36x36" in msg and "10x5" in msg, msg
    msg = refusal(env_id=CATCH, env_kwargs={"rows": 12, "cols": 9, "scale": 8}, latent_ae=True)
    assert msg.startswith("latent_ae:") and "84x84" in msg and "96x72" in msg, msg
    msg = refusal(env_id=CATCH, model="mlp")
    assert msg.startswith("model:") and "images" in msg, msg
    msg = refusal(env_id="Pendulum-v1")
    assert msg.startswith("env_id:") and "action space Box" in msg and "discrete actions only" in msg, msg
    msg = refusal(env_id="Blackjack-v1")
    assert msg.startswith("env_id:") and "observation space Tuple is not supported" in msg, msg
    msg = refusal(env_id=CATCH, env_kwargs={"rows": 1})
    assert msg.startswith("env_id:") and "constructor raised ValueError" in msg and "rows >= 3" in msg, msg
    msg = refusal(env_id=CATCH, env_kwargs={"no_such_arg": 1})
    assert msg.startswith("env_id:") and "no_such_arg" in msg, msg
    msg = refusal(env_id="no_such_module_xyz:Catch-v0")
    assert msg.startswith("env_id:") and "cannot import module 'no_such_module_xyz'" in msg, msg
    msg = refusal(env_id="tests.pixel_envs:NoSuchEnv-v0")
    assert msg.startswith("env_id:") and "registered no env 'NoSuchEnv-v0'" in msg, msg


def test_an_env_that_fails_in_reset():
    """Building passes (so does POST /runs, which only builds); the learner's check fails with the reason."""
    assert env_spec("tests.pixel_envs:BrokenReset-v0").obs_shape == (1, 10, 5)
    with pytest.raises(EnvRefused, match="RuntimeError in reset or step: reset is broken on purpose"):
        check_env("tests.pixel_envs:BrokenReset-v0")


def test_render_mode_in_env_kwargs_does_not_clash_with_rendering():
    venv = VectorEnv(EnvOptions(CATCH, json.dumps({"render_mode": "rgb_array"})), 1, 0, render=True)
    venv.reset()
    assert venv.render().shape == (10, 5, 3)
    venv.close()


def test_final_observation_shows_how_the_episode_ended():
    venv = VectorEnv(CATCH, 1, seed=0)
    obs = venv.reset()
    for _ in range(9):
        assert venv.final_observation(0) is None
        obs, _, term, _, _ = venv.step(np.ones(1, np.int64))
    assert term[0]
    last = venv.final_observation(0)
    assert last.shape == (1, 10, 5) and last[0, 9].max() > 0  # ball and paddle on the bottom row
    assert obs[0, 0, 0].max() == 255  # the returned obs already starts the next episode: the ball on top
    venv.close()


def fresh_checkpoint(path, **fields) -> str:
    """A checkpoint as the learner writes it (config + model), of an untrained model."""
    cfg = RunConfig(**({"max_agent_steps": 1000} | fields))
    torch.save({"config": cfg.model_dump(mode="json"), "model": build_model(cfg, env_spec(cfg)).state_dict(),
                "updates": 0}, path)
    return str(path)


def gif_frames(path) -> tuple[tuple[int, int], int]:
    with Image.open(path) as im:
        return im.size, im.n_frames


def test_eval_video_of_an_image_env_shows_its_observations(tmp_path):
    ckpt = fresh_checkpoint(tmp_path / "catch.pt", env_id=CATCH, env_kwargs={"rows": 8})
    result = evaluate(ckpt, episodes=3, video=tmp_path / "catch.gif")
    assert result["lengths"] == [7, 7, 7] and "video_error" not in result
    # the observation before each step and the last one; 8x5 scaled to 320 high
    assert result["video_length"] == 7 and result["video_frames"] == 8
    assert gif_frames(tmp_path / "catch.gif") == ((200, 320), 8)


def test_eval_video_of_cartpole_renders_rgb(tmp_path):
    ckpt = fresh_checkpoint(tmp_path / "cartpole.pt", env_id="CartPole-v1")
    result = evaluate(ckpt, episodes=2, video=tmp_path / "cartpole.gif")
    assert "video_error" not in result and result["video_frames"] == result["video_length"] + 1
    assert gif_frames(tmp_path / "cartpole.gif") == ((320, 213), result["video_frames"])
