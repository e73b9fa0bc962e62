"""Delta end-effector control (control="ee_delta") of the MJX arm tasks: the experts' deltas
reproduce their joint targets within IK tolerance, a zero action holds the arm still, the
delta expert succeeds, and the action space is what the docs say. One compiled rollout
per check (MJX compiles take 10-40 s each on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.envs.ee_control import joint_action


@pytest.fixture(scope="module")
def pick_place():
    return envs.make("PickPlace"), envs.make("PickPlaceEE")


def test_the_action_space(pick_place):
    joint, ee = pick_place
    assert (joint.action_size, ee.action_size) == (7, 5)
    np.testing.assert_array_equal(ee.action_low[:4], -1.0)
    np.testing.assert_array_equal(ee.action_high[:4], 1.0)
    assert float(ee.action_low[4]) == float(joint.action_low[6])
    assert float(ee.action_high[4]) == float(joint.action_high[6])
    assert ee.action_obs_index == (-1,) * 5  # deltas are predicted as they are
    assert envs.make("PickPlace", control="ee_delta").action_size == 5
    with pytest.raises(ValueError, match="control must be one of"):
        envs.make("PickPlace", control="cartesian")
    with pytest.raises(ValueError, match="ee_lin_scale must be in"):
        envs.make("PickPlaceEE", ee_lin_scale=0.0)


def test_expert_deltas_reproduce_its_joint_targets_and_succeed(pick_place):
    """Along a clean expert episode in ee_delta control: the IK step of the environment turns
    the delta expert's action into the joint expert's target (mean error well below the
    step the target asks for), and the episode succeeds."""
    joint_task, ee_task = pick_place
    joint_expert = envs.make_expert("PickPlace", joint_task)
    ee_expert = envs.make_expert("PickPlaceEE", ee_task)

    @jax.jit
    def run(key):
        def body(carry, _):
            s, es = carry
            q_target, _ = joint_expert.act(es, s)
            a, es2 = ee_expert.act(es, s)
            q_from_delta = joint_action(ee_task, s.data["mjx"], a)
            q_now = s.data["mjx"].qpos[joint_task.arm.qpos]
            s2 = ee_task.step(s, a)
            done = s.info["success"]
            return (s2, es2), (q_target[:6], q_from_delta[:6], q_now, a, done)

        s0 = ee_task.reset(key)
        _, out = jax.lax.scan(body, (s0, ee_expert.init(key)), None, 120)
        return out

    q_target, q_from_delta, q_now, a, done = jax.device_get(run(jax.random.PRNGKey(3)))
    assert done.any(), "the delta expert did not succeed"
    live = ~done  # steps before success
    err = np.abs(q_from_delta - q_target)[live]
    step = np.abs(q_target - q_now)[live]
    assert err.mean() < 0.1 * step.mean(), (err.mean(), step.mean())
    assert np.percentile(err, 95) < 0.01  # rad
    assert np.abs(a[live][:, :4]).max() <= 1.0


def test_a_zero_action_holds_the_arm_still(pick_place):
    _, ee = pick_place
    grip = ee.action_high[4:5] * 0.9

    @jax.jit
    def hold(key):
        s0 = ee.reset(key)
        zero = jnp.concatenate([jnp.zeros(4), grip])

        def body(s, _):
            s2 = ee.step(s, zero)
            return s2, s2.obs[13:16]  # the tcp position

        _, tcp = jax.lax.scan(body, s0, None, 30)
        return s0.obs[13:16], tcp

    start, tcp = jax.device_get(hold(jax.random.PRNGKey(0)))
    assert np.abs(tcp - start).max() < 1e-3  # m, over 30 steps
    # and +x at 0.3 moves the tcp 0.3 * ee_lin_scale per step along x, without drifting
    # in z (the pose change applies to the commanded pose, so the PD's lag does not add up)
    _, ee_task = pick_place

    @jax.jit
    def push(key):
        s0 = ee_task.reset(key)
        a = jnp.concatenate([jnp.array([0.3, 0.0, 0.0, 0.0]), grip])
        s = jax.lax.fori_loop(0, 8, lambda _, s: ee_task.step(s, a), s0)
        return s.obs[13:16] - s0.obs[13:16]

    moved = np.asarray(push(jax.random.PRNGKey(0)))
    want = 8 * 0.3 * ee_task.ee_lin_scale
    assert 0.85 * want < moved[0] < 1.1 * want, (moved, want)
    assert np.abs(moved[1:]).max() < 0.1 * want, moved


def test_the_simulated_robot_takes_the_same_deltas():
    """SimRobot (MuJoCo C, the robot loop's stand-in) on PickPlaceEE: the spec says the
    action space, a zero action holds still, +x at 0.3 moves 0.3 * ee_lin_scale per step."""
    from resfit_jax.robot.sim_server import SimRobot

    robot = SimRobot("PickPlaceEE", latency_s=0.0)
    spec = robot.spec()
    assert spec["action_size"] == 5 and spec["action_low"][:4] == [-1.0] * 4
    start = robot.reset()[13:16]
    grip = [0.9 * spec["action_high"][4]]
    for _ in range(10):
        robot.send_action(np.array([0.0, 0.0, 0.0, 0.0] + grip))
    held = robot.observe()[13:16]
    assert np.abs(held - start).max() < 1e-3
    for _ in range(8):
        robot.send_action(np.array([0.3, 0.0, 0.0, 0.0] + grip))
    moved = robot.observe()[13:16] - held
    want = 8 * 0.3 * robot.task.ee_lin_scale
    assert 0.85 * want < moved[0] < 1.1 * want and np.abs(moved[1:]).max() < 0.1 * want, moved
