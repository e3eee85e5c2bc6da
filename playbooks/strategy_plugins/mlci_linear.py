"""mlci's default strategy: Ansible's `linear`, run through Mitogen when it is installed.

Mitogen keeps one Python interpreter per host alive for the whole run and sends modules over its own channel,
so a task costs a message instead of an SSH exec, a fresh remote interpreter and a module upload. On the
sandbox fleet an idempotent `site.yml` took 15 s instead of 38 s on 3 hosts, 34 s instead of 65 s on 8
(`python3 bench/site.py`).

Ansible looks strategies up by file in `strategy_plugins` (ansible.cfg), and Mitogen's own plugin folder sits
inside whatever environment installed it; this file bridges the two. Without Mitogen the run falls back to
the stock `linear` strategy with one warning, so a plain `pip install ansible` still works, only slower; so does
an ansible-core that the installed Mitogen refuses (it raises AnsibleError on import for releases it does not
support).
`ANSIBLE_STRATEGY=linear` opts out for a single run.
"""

from __future__ import annotations

from ansible.utils.display import Display


def _warm_templating() -> None:
    """Load every builtin Jinja filter and test, and Jinja's lexer, once in the controller's main process.

    ansible-core forks a worker per host and task and loads all of them on a worker's first template; done
    here first, every worker inherits them through fork instead. On the 3-host sandbox the workers' CPU for
    an idempotent site.yml went from about 10.6 s to 9.7 s. A failure only costs that time, so it is shown
    at -vvv and otherwise ignored.
    """
    try:
        from ansible.plugins.loader import filter_loader, test_loader
        from ansible.template import Templar, trust_as_template

        filter_loader.get("default")
        test_loader.get("defined")
        Templar().template(trust_as_template("{{ 1 | default(0) is defined }}"))
    except Exception as exc:  # an optimisation must never stop a run
        Display().vvv(f"mlci_linear: template warm-up skipped: {exc!r}")


_warm_templating()

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except Exception as unusable:  # ImportError: missing; AnsibleError: Mitogen refuses this ansible-core
    from ansible.plugins.strategy.linear import StrategyModule as _Linear
    from ansible.release import __version__ as _ansible_core

    if isinstance(unusable, ImportError):
        why = f"Mitogen is not installed ({unusable})"
        fix = "`pip install mitogen` (part of mlci's dependencies) makes runs about twice as fast."
    else:
        why = f"Mitogen cannot run with ansible-core {_ansible_core} ({type(unusable).__name__}: {unusable})"
        fix = "Install the pair pyproject.toml pins (`pip install -e .`) for runs about twice as fast."
    Display().warning(f"{why}; running the plain linear strategy. {fix}")

    class StrategyModule(_Linear):
        pass

else:
    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
        pass
