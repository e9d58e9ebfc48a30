"""The metric definitions on Spark give the figures DuckDB gives, on the same files and questions.

One local Spark session (two cores) serves the module; the sample is the analytics sample, written by the
bot's own event writer, with one file copied under another name (a replayed flush: its rows count once).
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import analytics
from analytics.filters import AnalyticsError, Filters
from analytics.query import Events
from analytics.sample import write_sample
from analytics.spark import SparkEvents, local_session
from bot.facts import STEPS, EventName
from bot.store import FileStore, write_events
from tests.support.builders import customer_event
from tests.support.engines import assert_same

TODAY = datetime.now(UTC).date()

QUESTIONS = {
    "everything": Filters(),
    "a campaign": Filters(campaign="spring-sale"),
    "a date range in a time zone": Filters(
        start=TODAY - timedelta(days=30), end=TODAY - timedelta(days=8), tz="America/New_York"
    ),
    "a campaign, a range and a one-day window": Filters(
        campaign="summer-sale",
        start=TODAY - timedelta(days=40),
        end=TODAY,
        window=timedelta(days=1),
        tz="Asia/Kolkata",
    ),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_sample(root, customers=1500, days=60, progress=False)
    # A replayed flush: the same rows in a second file of the same day.
    first = sorted(root.glob("events/*/*.parquet"))[0]
    shutil.copy(first, first.with_name("replayed-" + first.name))
    # Reveals that found the summer sale's codes all handed out (the sample's loyalty pool may have few).
    gone = datetime.now(UTC) - timedelta(days=1)
    refused = [
        customer_event(f"gone-{n}", n * 60, EventName.COUPON_POOL_EMPTY, start=gone, campaign="summer-sale")
        for n in range(3)
    ]
    write_events(FileStore(str(root)), refused, "refused-00000001")
    return root


@pytest.fixture(scope="module")
def spark():
    session = local_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def engines(store, spark) -> tuple[Events, SparkEvents]:
    return Events(str(store)), SparkEvents(str(store), spark=spark)


@pytest.mark.parametrize("question", QUESTIONS.values(), ids=QUESTIONS.keys())
def test_funnel_timeline_and_cohorts_equal_duckdb(engines, question):
    duckdb_events, spark_events = engines
    funnel = duckdb_events.funnel(question)
    assert funnel.column("customers")[0].as_py() > 0  # a question with customers: equality means something
    assert funnel.column("customers")[STEPS.index("redeemed")].as_py() > 0  # codes used at the till too
    assert_same(spark_events.funnel(question), funnel)
    assert_same(spark_events.timeline(question), duckdb_events.timeline(question))
    assert_same(spark_events.cohorts("week", question), duckdb_events.cohorts("week", question))
    assert_same(
        spark_events.cohorts("week", question, step="redeemed"),
        duckdb_events.cohorts("week", question, step="redeemed"),
    )


@pytest.mark.parametrize("period", ["day", "month"])
def test_daily_and_monthly_cohorts_equal_duckdb(engines, period):
    duckdb_events, spark_events = engines
    question = QUESTIONS["a date range in a time zone"]
    assert_same(spark_events.cohorts(period, question), duckdb_events.cohorts(period, question))


def test_buttons_journeys_and_campaigns_equal_duckdb(engines):
    duckdb_events, spark_events = engines
    question = QUESTIONS["a date range in a time zone"]
    assert_same(spark_events.buttons(question), duckdb_events.buttons(question))
    assert_same(spark_events.journeys(question), duckdb_events.journeys(question))
    assert_same(spark_events.campaigns(), duckdb_events.campaigns())
    assert_same(spark_events.pool_empty(question), duckdb_events.pool_empty(question))
    assert_same(spark_events.pool_empty(), duckdb_events.pool_empty())
    assert duckdb_events.pool_empty().column("reveals").to_pylist()[-1] >= 3  # the summer-sale's, at least


@pytest.mark.parametrize("question", QUESTIONS.values(), ids=QUESTIONS.keys())
def test_sources_and_a_source_or_variant_filter_equal_duckdb(engines, question):
    duckdb_events, spark_events = engines
    sources = duckdb_events.sources(question)
    assert sources.num_rows >= 4  # the sample's till, flyer, instagram, ad and direct
    assert_same(spark_events.sources(question), sources)
    from_the_till = dataclasses.replace(question, source="till")
    assert_same(spark_events.funnel(from_the_till), duckdb_events.funnel(from_the_till))
    variant_b = dataclasses.replace(question, variant="B")
    assert_same(spark_events.timeline(variant_b), duckdb_events.timeline(variant_b))
    assert_same(spark_events.journeys(variant_b), duckdb_events.journeys(variant_b))


@pytest.mark.parametrize("step", ["coupon_revealed", "redeemed"])
def test_the_experiment_and_its_timeline_equal_duckdb(engines, step):
    duckdb_events, spark_events = engines
    for question in (Filters(), Filters(start=TODAY - timedelta(days=30), tz="Asia/Kolkata", source="till")):
        experiment = duckdb_events.experiment(question, step=step)
        assert min(experiment.column("conversions").to_pylist()) > 0
        assert_same(spark_events.experiment(question, step=step), experiment)
        assert_same(
            spark_events.experiment_timeline(question, step=step),
            duckdb_events.experiment_timeline(question, step=step),
        )
    with pytest.raises(AnalyticsError, match="recorded no variants"):
        spark_events.experiment(campaign="summer-sale")


def test_the_keyword_form_and_raw_sql_in_duckdbs_dialect(engines):
    duckdb_events, spark_events = engines
    assert_same(spark_events.funnel(campaign="loyalty"), duckdb_events.funnel(campaign="loyalty"))
    query = "select count(*) as stored, count(distinct event_id) as events from raw_events where ts >= $since"
    since = datetime.now(UTC) - timedelta(days=10)
    assert_same(spark_events.sql(query, {"since": since}), duckdb_events.sql(query, {"since": since}))


def test_customer_keys_are_64_bit_on_spark_as_on_duckdb(engines):
    # Spark's own hash() is 32-bit: among 77,000 customers two more likely than not share a key, and merge.
    _, spark_events = engines
    keys = spark_events.sql("select hash(customer_id) as customer from raw_events limit 1")
    assert keys.schema.field("customer").type == pa.int64()


def test_a_campaign_is_bound_as_a_value_never_as_sql(engines):
    duckdb_events, spark_events = engines
    hostile = "spring-sale' or campaign_id <> '"
    funnel = spark_events.funnel(campaign=hostile)
    assert funnel.column("customers").to_pylist() == [0] * funnel.num_rows
    assert_same(funnel, duckdb_events.funnel(campaign=hostile))


def test_bad_questions_get_the_same_errors(engines):
    _, spark_events = engines
    with pytest.raises(AnalyticsError, match="period"):
        spark_events.cohorts("year")
    with pytest.raises(AnalyticsError, match="time zone"):
        spark_events.funnel(tz="Mars/Olympus")


def test_refresh_reads_files_written_since(tmp_path, spark):
    events = SparkEvents(str(tmp_path), spark=spark)
    assert events.campaigns().num_rows == 0  # an empty store answers, with nothing
    write_sample(tmp_path, customers=50, days=5, progress=False)
    reached = events.refresh().funnel().column("customers")[0].as_py()
    assert reached == Events(str(tmp_path)).funnel().column("customers")[0].as_py() > 0


def test_open_with_the_spark_engine(store, spark):
    events = analytics.open(store, engine="spark")
    assert isinstance(events, SparkEvents)
    with pytest.raises(AnalyticsError, match="engine"):
        analytics.open(store, engine="postgres")


def test_the_session_has_room_for_the_compiled_code_of_many_questions(spark):
    # With only the quick compiler the JVM reserves 48 MB for compiled code; this module's questions filled
    # it, and a task then failed with "Out of space in CodeCache".
    pools = spark._jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
    reserved = sum(pool.getUsage().getMax() for pool in pools if "Code" in pool.getName())
    assert reserved >= 240 * 1024 * 1024


def test_a_share_on_a_rounding_tie_is_the_same_on_both_engines(tmp_path, spark):
    # 17 of 160 clicks is 0.10625: DuckDB and Spark rounded the double quotient apart (0.1063, 0.1062).
    start = datetime(2026, 3, 2, 10, tzinfo=UTC)
    clicks = [
        customer_event(
            f"c{n}", n, EventName.COUPON_REQUESTED, start=start, button="yes" if n < 17 else "GET_STARTED"
        )
        for n in range(160)
    ]
    write_events(FileStore(str(tmp_path)), clicks, "writer-00000001")

    duckdb_buttons = Events(str(tmp_path)).buttons()
    assert_same(SparkEvents(str(tmp_path), spark=spark).buttons(), duckdb_buttons)
    shares = {row["button"]: row["share"] for row in duckdb_buttons.to_pylist()}
    assert shares == {"GET_STARTED": 0.8938, "yes": 0.1063}  # 143 and 17 of 160: 0.89375 and 0.10625, half up


def test_a_questions_steps_are_computed_once_not_at_each_use(engines):
    # They were kept as a cached query that Spark never matched: each use (14 in the timeline) computed
    # them again from the journeys, and a timeline took 12 s on this store instead of 1.3 s.
    _, spark_events = engines
    spark_events.funnel(QUESTIONS["a campaign"])
    count = spark_events._spark.sql("select count(*) from customer_steps")  # the view the metrics read
    plan = count._jdf.queryExecution().executedPlan().toString()
    assert plan.count("Scan") == 1, plan  # of the question's rows: not of the files, nor of the journeys


def test_a_question_whose_rows_an_executor_took_along_is_computed_again(store, spark):
    # A question's rows live on the executors that computed them (a local checkpoint). Losing them, as a
    # cluster does with an executor, failed every later metric of that question.
    spark_events, duckdb_events = SparkEvents(str(store), spark=spark), Events(str(store))
    question = QUESTIONS["a date range in a time zone"]
    assert_same(spark_events.funnel(question), duckdb_events.funnel(question))
    persistent = spark.sparkContext._jsc.sc().getPersistentRDDs().values().iterator()
    checkpoints = []
    while persistent.hasNext():
        rdd = persistent.next()
        if "localCheckpoint" in rdd.toString():
            checkpoints.append(rdd)
    assert checkpoints
    for rdd in checkpoints:
        rdd.unpersist(True)
    assert_same(spark_events.timeline(question), duckdb_events.timeline(question))
    assert_same(spark_events.funnel(question), duckdb_events.funnel(question))
