"""tools/experiments/analysis/stats.py: Fisher's exact test, t intervals and sample sizes, checked by hand."""
import pytest

from file_modules import experiments_module

stats = experiments_module("analysis.stats")


def test_fisher_exact_p_known_values():
    # Fisher's tea-tasting table and the textbook 1/10 against 11/14 table (R: fisher.test).
    assert stats.fisher_exact_p(3, 4, 1, 4) == pytest.approx(0.4857, abs=1e-4)
    assert stats.fisher_exact_p(1, 10, 11, 14) == pytest.approx(0.002759, abs=1e-6)
    assert stats.fisher_exact_p(11, 14, 1, 10) == pytest.approx(stats.fisher_exact_p(1, 10, 11, 14))
    assert stats.fisher_exact_p(10, 30, 10, 30) == pytest.approx(1.0)
    assert stats.fisher_exact_p(0, 30, 0, 30) == 1.0 and stats.fisher_exact_p(0, 0, 3, 5) == 1.0
    assert stats.fisher_exact_p(7, 30, 0, 30) == pytest.approx(0.0105, abs=1e-4)
    with pytest.raises(ValueError, match="wins"):
        stats.fisher_exact_p(31, 30, 0, 30)


def test_t_interval():
    assert stats.t_interval([1.0]) is None
    low, high = stats.t_interval([10.0, 20.0, 30.0])  # mean 20, sd 10, t(0.975, 2 df) = 4.3027
    assert (low, high) == pytest.approx((20 - 4.3027 * 10 / 3 ** 0.5, 20 + 4.3027 * 10 / 3 ** 0.5), abs=1e-3)
    # mean 20, sd 14.142, standard error 10, t(0.975, 1 df) = 12.706
    assert stats.t_interval([30.0, 10.0]) == pytest.approx([20 - 127.062, 20 + 127.062], abs=1e-2)
    assert stats.t_interval([5.0, 5.0]) == [5.0, 5.0]


def test_episodes_for_power():
    # 50 % -> 60 %: mean 0.55; (1.96 sqrt(2 x 0.55 x 0.45) + 0.8416 sqrt(0.25 + 0.24))^2 / 0.1^2 = 387.3.
    assert stats.episodes_for_power(0.5, 10) == 388
    assert stats.episodes_for_power(0.5, 10, power=0.9) > 388 > stats.episodes_for_power(0.5, 15)
    assert stats.episodes_for_power(0.5, 10, alpha=0.01) > 388
    with pytest.raises(ValueError, match="rate"):
        stats.episodes_for_power(0.9, 15)
