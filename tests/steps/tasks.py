"""Luigi tasks over the test-only steps."""

from __future__ import annotations

from typing import Any

import luigi

from caravan.tasks import NomadJobTask


class Echo(NomadJobTask):
    """Echoes its hyperparameters; ``needs`` names Echo tasks (same date) it depends on."""

    job = "echo"
    date = luigi.DateParameter()
    name = luigi.Parameter()
    hyper = luigi.DictParameter(default={})
    needs = luigi.ListParameter(default=[])

    def requires(self) -> dict[str, Echo]:
        return {n: Echo(date=self.date, name=n) for n in self.needs}

    def hyperparameters(self) -> dict[str, Any]:
        from caravan.tasks import plain

        return dict(plain(self.hyper))


class Fail(NomadJobTask):
    job = "fail"
    date = luigi.DateParameter()
    code = luigi.IntParameter(default=3)


class Sleep(NomadJobTask):
    job = "sleep"
    date = luigi.DateParameter()
    seconds = luigi.FloatParameter()


class WithUnknownMeta(Echo):
    """Sends a meta key the echo spec does not allow."""

    def meta(self) -> dict[str, str]:
        return {**super().meta(), "not_in_spec": "x"}
