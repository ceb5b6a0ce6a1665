"""Step ``simulate-events``: a SIMULATED click log for one day (the embedded demo's data source)."""

from __future__ import annotations

import datetime as dt

from caravan.step import StepContext, run_step


def simulate(ctx: StepContext) -> None:
    from caravan.ml.simulate import simulate_click_log

    date = dt.date.fromisoformat(ctx.params["date"])
    table = simulate_click_log(date, rows=int(ctx.params["rows"]), seed=int(ctx.params["seed"]))
    ctx.writer.write_parquet("events.parquet", table)
    ctx.writer.metrics.update(rows=table.num_rows, simulated=True,
                              click_rate=round(float(table["clicked"].to_numpy().mean()), 6))


if __name__ == "__main__":
    run_step(simulate, job="simulate-events")
