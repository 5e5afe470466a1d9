"""A consistency student (`robodiff distill`): its schedule, its sampler on both paths (the
straightforward one and the fast one, same actions for the same noise), guided sampling or its
refusal, and the distillation objective's networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from test_fast_inference import FEATURES, FP32_ATOL, STATS, obs, policy_for

from robodiff.errors import ConfigError
from robodiff.policy.consistency import boundary_scalings, ddim_grid, draw_noise, sampling_timesteps
from robodiff.policy.distill import ConsistencyDistillation, student_config
from robodiff.policy.factory import build_policy, guidance_refusal, with_sampling_steps
from robodiff.policy.fast_inference import FastSampler, sampler_coefficients

HISTORY = {"cam": np.zeros((2, 32, 32, 3), np.uint8), "state": np.full((2, 3), 0.5)}


def student_of(teacher, steps: int = 1, grid_steps: int | None = None):
    """A student of `teacher` with the teacher's weights (what distillation starts from)."""
    cfg = student_config(teacher.policy_cfg, "teacher-dir", 7, "consistency", grid_steps, 0.95, steps)
    student = build_policy(cfg, FEATURES, STATS).eval()
    student.load_state_dict(teacher.state_dict())
    return student


def test_the_grid_is_the_teachers_ddim_schedule_and_the_boundary_is_its_clean_end():
    ddim = DDIMScheduler(num_train_timesteps=100, steps_offset=0)
    ddim.set_timesteps(10)
    assert ddim_grid(100, 10) == ddim.timesteps.tolist() == list(range(90, -1, -10))
    assert [sampling_timesteps(100, 10, k) for k in (1, 2, 3, 4)] == [[90], [90, 40], [90, 60, 30],
                                                                      [90, 70, 40, 20]]
    c_skip, c_out = boundary_scalings(torch.tensor([-1, 0, 10, 90]))
    assert c_skip[0] == 1 and c_out[0] == 0  # the identity at the clean end
    assert torch.all(c_skip[1:] < 3e-3) and torch.all(c_out[1:] > 0.99)  # the x0 estimate elsewhere


@pytest.mark.parametrize("name,prediction", [("diffusion_unet", "epsilon"), ("diffusion_unet", "sample"),
                                             ("diffusion_transformer", "epsilon")])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_fast_path_equals_straightforward_path(name, prediction, steps):
    student = student_of(policy_for(name, prediction), steps)
    fast = FastSampler(student, precision="fp32", threads=None)
    batch = obs(2)
    noise = student.sample_noise(2, torch.Generator().manual_seed(5))
    # The re-noising of steps 2.. draws from the generator, in the same order on both paths.
    eager = student.predict_action(batch, noise=noise, generator=torch.Generator().manual_seed(9))
    got = fast(batch, noise=noise, generator=torch.Generator().manual_seed(9))
    assert got.shape == (2, 8, 2)
    assert (got - eager).abs().max() < FP32_ATOL
    again = fast(batch, noise=noise, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(again, got, atol=0, rtol=0)
    if steps > 1:  # fresh noise changes the answer; one step is deterministic given the noise
        other = fast(batch, noise=noise, generator=torch.Generator().manual_seed(10))
        assert (other - got).abs().max() > 1e-3


def test_sampler_rows_reproduce_the_consistency_step():
    student = student_of(policy_for(prediction_type="sample"), steps=3)
    steps, coef = sampler_coefficients(student)
    scheduler = student.inference_scheduler
    scheduler.set_timesteps(3)
    assert steps == [90, 60, 30]
    x, out = torch.randn(2, 8, 2) * 2, torch.randn(2, 8, 2)
    for t, (c_x, c_o, s_x, s_0, d_x, d_o, p_0, p_e) in zip(steps, coef.tolist()):
        assert d_x == d_o == 0  # the noise of the next level is fresh, not the model's
        expected = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        fresh = draw_noise((2, 8, 2), torch.Generator().manual_seed(t), torch.device("cpu"))
        clean = s_x * x + s_0 * (c_x * x + c_o * out).clamp(-1, 1)
        torch.testing.assert_close(p_0 * clean + p_e * fresh, expected, atol=1e-5, rtol=0)
    assert (p_0, p_e) == (1.0, 0.0)  # the last step returns the clean estimate


@pytest.mark.parametrize("steps", [1, 3])
def test_a_k_step_student_evaluates_its_network_k_times(steps):
    student = student_of(policy_for("diffusion_transformer"), steps)
    fast = FastSampler(student, precision="fp32", threads=None)
    calls = []
    fast.policy.denoiser.register_forward_hook(lambda *_: calls.append(1))
    fast.predict_action_chunk(HISTORY)
    assert len(calls) == steps


def test_sampling_steps_changes_the_steps_within_the_range_the_policy_allows():
    teacher = policy_for()
    student_cfg = student_of(teacher).policy_cfg
    assert with_sampling_steps(student_cfg, None) is student_cfg
    assert with_sampling_steps(student_cfg, 3)["noise_scheduler"]["num_inference_steps"] == 3
    assert with_sampling_steps(teacher.policy_cfg, 25)["noise_scheduler"]["num_inference_steps"] == 25
    with pytest.raises(ConfigError, match=r"sampling_steps=11 must be in 1\.\.10 .*distillation grid"):
        with_sampling_steps(student_cfg, 11)
    with pytest.raises(ConfigError, match=r"sampling_steps=101 must be in 1\.\.100"):
        with_sampling_steps(teacher.policy_cfg, 101)
    with pytest.raises(ConfigError, match="sampling_steps=2 is for a diffusion policy; .* 'regression'"):
        with_sampling_steps({**teacher.policy_cfg, "name": "regression"}, 2)


def test_student_configs_are_checked():
    teacher = policy_for()
    cfg = student_config(teacher.policy_cfg, "t", 3, "consistency", None, 0.95, 2)
    assert cfg["noise_scheduler"]["inference_scheduler"] == "consistency"
    assert cfg["noise_scheduler"]["num_inference_steps"] == 2
    assert cfg["distillation"] == {"method": "consistency", "teacher": "t", "teacher_step": 3, "grid_steps": 10,
                                   "target_decay": 0.95}
    assert teacher.policy_cfg["noise_scheduler"]["inference_scheduler"] == "ddim"  # the teacher's is left alone
    for args, words in (((teacher.policy_cfg, "t", 3, "progressive", None, 0.9, 1), "method 'progressive'"),
                        (({**teacher.policy_cfg, "name": "regression"}, "t", 3, "consistency", None, 0.9, 1),
                         "is a 'regression' policy"),
                        ((cfg, "s", 3, "consistency", None, 0.9, 1), "already a student"),
                        ((teacher.policy_cfg, "t", 3, "consistency", 2, 0.9, 3), "grid_steps=2 must be in")):
        with pytest.raises(ConfigError, match=words):
            student_config(*args)
    plain = {**teacher.policy_cfg, "noise_scheduler": {**teacher.policy_cfg["noise_scheduler"],
                                                       "inference_scheduler": "consistency"}}
    with pytest.raises(ConfigError, match="consistency samples a student written by `robodiff distill`"):
        build_policy(plain, FEATURES, STATS)


def test_guided_sampling_needs_two_steps_or_a_prefix_conditioned_student():
    frozen = np.array([[11.0, 4.0], [12.0, 3.0], [13.0, 2.0]])
    one = FastSampler(student_of(policy_for()), precision="fp32", threads=None)
    assert "sampling_steps=2" in guidance_refusal(one.policy.policy_cfg)
    with pytest.raises(ConfigError, match=r"executor=rtc\) needs a consistency student sampled in 2 or more steps"):
        one.predict_action_chunk_guided(HISTORY, frozen)
    n = one.policy.n_obs_steps
    for student in (student_of(policy_for(), steps=2), student_of(policy_for(max_prefix_steps=3), steps=1)):
        fast = FastSampler(student, precision="fp32", threads=None)
        assert guidance_refusal(student.policy_cfg) is None
        chunk = fast.predict_action_chunk_guided(HISTORY, frozen)
        np.testing.assert_allclose(chunk[n:n + 3], frozen, atol=1e-4)


def test_the_objective_freezes_the_teacher_and_moves_the_target_as_an_ema_of_the_student():
    teacher = policy_for()
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = student_config(teacher.policy_cfg, "t", 3, "consistency", None, 0.5, 1)
    torch.manual_seed(1)
    student = build_policy(cfg, FEATURES, STATS).train()
    objective = ConsistencyDistillation(student, teacher)
    for key, value in student.state_dict().items():  # the student starts as its teacher
        torch.testing.assert_close(value, teacher_weights[key], atol=0, rtol=0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    batch = {**obs(8), "action": torch.rand(8, 8, 2, generator=g) * 10 + torch.tensor([10.0, -5.0])}
    previous_target = None
    for _ in range(3):
        loss = objective(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        before = {k: v.clone() for k, v in objective.target.averaged_model.state_dict().items()}
        objective.after_step()
        previous_target = before
    key = "denoiser.final_conv.1.weight"
    now = objective.target.averaged_model.state_dict()[key]
    torch.testing.assert_close(now, 0.5 * previous_target[key] + 0.5 * student.state_dict()[key])
    assert not torch.equal(student.state_dict()[key], teacher_weights[key])
    for k, v in teacher.state_dict().items():  # the teacher never moved
        torch.testing.assert_close(v, teacher_weights[k], atol=0, rtol=0)
    assert not any(p.requires_grad for p in teacher.parameters())
    restored = ConsistencyDistillation(build_policy(cfg, FEATURES, STATS), teacher)
    restored.load_train_state(objective.train_state())
    torch.testing.assert_close(restored.target.averaged_model.state_dict()[key], now, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_of_a_two_step_student_takes_its_fresh_noise_as_an_input():
    student = student_of(policy_for(), steps=2).to("cuda")
    graphed = FastSampler(student, precision="fp32", threads=None, cuda_graph=True)
    eager = FastSampler(student, precision="fp32", threads=None, cuda_graph=False)
    batch = obs(1)
    noise = student.sample_noise(1, torch.Generator("cuda").manual_seed(4))
    guide = graphed.guide(np.array([[11.0, 4.0], [12.0, 3.0]]))
    for seed, g in ((1, None), (2, guide), (3, None)):
        # The same generator on both: the replayed graph draws nothing itself.
        got = graphed(batch, noise=noise, generator=torch.Generator("cuda").manual_seed(seed), guide=g)
        want = eager(batch, noise=noise, generator=torch.Generator("cuda").manual_seed(seed), guide=g)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert len(graphed._graphs) == 2
