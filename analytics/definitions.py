"""Every metric as SQL, written once in DuckDB's dialect.

analytics.dialects translates it for Spark, Athena and Trino. In words: docs/metrics.md.
"""

from __future__ import annotations

from analytics.filters import AnalyticsError
from bot.facts import PREVIOUS_STEP, STEPS, EventName, FunnelStep

PERIODS = ("day", "week", "month")

_E = EventName


def _earliest(a: str, b: str) -> str:
    """The earlier of two nullable times (LEAST skips nulls in DuckDB and Spark, not in Trino)."""
    return f"case when {a} is null then {b} when {b} is null or {a} <= {b} then {a} else {b} end"


_SHARE_DECIMALS = 4


def _share(part: str, whole: str) -> str:
    """`part / whole` to _SHARE_DECIMALS places, rounded half up on the exact ratio in integers: the same in
    every engine (a double's rounding differs between DuckDB and Spark on ties such as 17/160)."""
    scale = 10**_SHARE_DECIMALS
    return f"cast(({2 * scale} * ({part}) + ({whole})) // (2 * ({whole})) as double) / {scale}"


def _local_day(micros: str) -> str:
    """The day, in the question's zone, of a time held as µs since the epoch."""
    return f"cast(make_timestamp({micros})::timestamptz at time zone $tz as date)"


# Every UTC offset in use, and every instant one changes, is a whole number of quarter hours: all the times
# of a quarter hour of UTC fall on one day in any zone. A question that needs the local day of many times
# converts each quarter hour it meets once (a zone's conversion is most of the work otherwise).
_QUARTER_US = 15 * 60 * 1_000_000


def _quarter(micros: str) -> str:
    """The quarter hour of UTC (its number since the epoch) of a time held as µs since the epoch."""
    return f"({micros}) // {_QUARTER_US}"


def _quarter_days(quarters: str) -> str:
    """A relation of (quarter, day): the local day of each distinct `quarter` of the relation `quarters`."""
    day = _local_day(f"quarter * {_QUARTER_US}")
    return (
        f"select quarter, {day} as day"
        f" from (select distinct quarter from {quarters} where quarter is not null) as distinct_quarters"
    )


# Receipts carry the platform's watermark in their own column; files written before it existed hold it in
# `detail`. `columns` are the stored columns the scan has: a column no file has reads as null.
def raw_events(scan: str, columns: set[str]) -> str:
    """The stored rows of `scan` (a relation) with every column of the event schema."""

    def column(name: str, type_: str) -> str:
        return name if name in columns else f"cast(null as {type_}) as {name}"

    receipts = f"('{_E.MESSAGE_READ}', '{_E.MESSAGE_DELIVERED}')"
    old_watermark = "try_cast(json_extract_string(detail, '$.watermark') as bigint)"
    if "watermark" in columns:
        watermark = f"coalesce(watermark, case when event in {receipts} then {old_watermark} end)"
    else:
        watermark = f"case when event in {receipts} then {old_watermark} end"
    if "detail" not in columns:
        watermark = "cast(null as bigint)"
    # Sends keep a digest of the platform's message id (bot.events.message_digest); files written before
    # hold the id itself, whose digest is computed here alike.
    unsigned = "('0x' || left(sha256(message_id), 16))::ubigint::hugeint"
    old_digest = f"({unsigned} - case when {unsigned} >= {2**63} then {2**64} else 0 end)::bigint"
    digest = "message_digest" if "message_digest" in columns else "cast(null as bigint)"
    if "message_id" in columns:
        digest = f"coalesce({digest}, {old_digest})"
    return f"""
    select event_id, ts, event_date, page_id, customer_id, campaign_id, {column("variant", "varchar")},
           event, {column("button", "varchar")}, {digest} as message_digest,
           {column("detail", "varchar")}, {watermark} as watermark, {column("source", "varchar")}
    from {scan}
    """


# Rows sharing an event_id (a redelivered webhook, a replayed flush, a copied file) are one event. Metrics
# need no deduplication (every step is a first time or an existence); this view is for analysts.
EVENTS_VIEW = """
select * from raw_events
qualify row_number() over (partition by event_id order by ts) = 1
"""

# The events whose order makes the funnel, each with a code. A journey's `steps` list holds `µs * 8 + code`
# for each of them: the first event of a kind in a span of time is the smallest number in a span of numbers
# (docs/design.md, "Analytics: one list of steps per journey").
_STEP_EVENT_ORDER = (
    _E.WELCOME_SENT,
    _E.COUPON_REQUESTED,
    _E.DECLINED,
    _E.COUPON_SENT,
    _E.COUPON_REVEALED,
    _E.COUPON_REDEEMED,
)
_STEP_CODES = {event: position for position, event in enumerate(_STEP_EVENT_ORDER, start=1)}
_LATER_STEP_EVENTS = _STEP_EVENT_ORDER[1:]  # their firsts are searched for the journeys that entered only
_CODE_RANGE = 8
# An event's code is its place in the list (a lookup costs DuckDB less than a CASE of six comparisons).
_STEP_CODE = "array_position([" + ", ".join(f"'{e}'" for e in _STEP_EVENT_ORDER) + "], event)"
_STEP_EVENTS = "(" + ", ".join(f"'{e}'" for e in _STEP_CODES) + ")"


def _first_of_all(event: EventName) -> str:
    """The column of a journey's first `event` at any time (µs), of _firsts."""
    return f"first_{event}"


def _first(event: EventName, low: str, high: str) -> str:
    """The µs of a journey's first `event` between `low` and `high` µs (inclusive), or null. The first of all
    (_first_of_all) answers unless it is earlier than `low`: then the list is searched with `low` and `high`,
    which costs several times more (docs/design.md, "Analytics: one list of steps per journey")."""
    code = _STEP_CODES[event]
    first = _first_of_all(event)
    search = (
        f"list_min(list_filter(steps, lambda s: s % {_CODE_RANGE} = {code} and s >= ({low}) * {_CODE_RANGE}"
        f" and s < ({high}) * {_CODE_RANGE} + {_CODE_RANGE})) // {_CODE_RANGE}"
    )
    return (
        f"case when {first} is null or {first} > ({high}) then null"
        f" when {first} >= ({low}) then {first} else {search} end"
    )


def _firsts(*events: EventName) -> str:
    """A journey's first `events` at any time (µs): one search of the list each, with nothing of the row."""
    return ", ".join(
        f"list_min(list_filter(steps, lambda s: s % {_CODE_RANGE} = {_STEP_CODES[event]})) // {_CODE_RANGE}"
        f" as {_first_of_all(event)}"
        for event in events
    )


# One row per journey (a customer in a campaign) of the rows in `source`, and one row per read receipt.
# A file that appears later merges in (MERGE_JOURNEYS, and its READS appended): journeys' lists concatenate.
JOURNEYS = f"""
select campaign_id, hash(customer_id) as customer,
       list(epoch_us(ts) * {_CODE_RANGE} + {_STEP_CODE}) as steps
from source
where event in {_STEP_EVENTS}
group by campaign_id, hash(customer_id)
"""

READS = f"""
select campaign_id, hash(customer_id) as customer, epoch_us(ts) as read_us, watermark * 1000 as watermark_us
from source
where event = '{_E.MESSAGE_READ}' and watermark is not null
"""

MERGE_JOURNEYS = """
select coalesce(old.campaign_id, new.campaign_id) as campaign_id,
       coalesce(old.customer, new.customer) as customer,
       list_concat(old.steps, new.steps) as steps
from journeys old
full join new_journeys new on old.campaign_id = new.campaign_id and old.customer = new.customer
"""


def _offset(step: str) -> str:
    """µs from a journey's entry to a step; a tap can precede the bot's stamp of the welcome: 0 then."""
    return f"case when {step} is null then null when {step} < entry then 0 else {step} - entry end"


# The source and variant of each welcome (a journey's are those of its entry welcome), built from every stored
# row when a question first asks for them: questions that do not ask never pay for it.
WELCOMES = f"""
select campaign_id, hash(customer_id) as customer, epoch_us(ts) as at_us,
       min(source) as source, min(variant) as variant
from raw_events
where event = '{_E.WELCOME_SENT}'
group by campaign_id, hash(customer_id), epoch_us(ts)
"""

# Welcomes of events written before sources were recorded.
UNKNOWN_SOURCE = "unknown"
# A Click-to-Messenger ad's source: `ad:<ad_id>`.
AD_SOURCE_PREFIX = "ad:"

_LABELLED = f"""
labelled as (  -- the journeys whose entry welcome has the question's source and variant
    select c.*, coalesce(w.source, '{UNKNOWN_SOURCE}') as source, w.variant
    from chosen c
    left join welcomes w on w.campaign_id = c.campaign_id and w.customer = c.customer and w.at_us = c.entry
    where c.entry is not null
      and ($source is null or coalesce(w.source, '{UNKNOWN_SOURCE}') = $source)
      and ($variant is null or w.variant = $variant)
),"""


# Per question: one row per customer reached, with the time each step was reached and the time it took.
# A customer in several campaigns (no campaign chosen) is at a step when any of their journeys is; the time
# is the earliest, the time taken the shortest.
def _journey_steps(labelled: bool) -> str:
    """The common table expressions of a question's journeys and their steps; `labelled`: with the source and
    variant of each journey's entry, and only the journeys of the question's source and variant."""
    labels = ", source, variant" if labelled else ""
    return f"""
chosen as not materialized (  -- the entry: the journey's first welcome on a day in the range
    select *, {_first(_E.WELCOME_SENT, "$start_us", "$end_us - 1")} as entry
    from (select *, {_firsts(_E.WELCOME_SENT)} from journeys
          where $campaign is null or campaign_id = $campaign) as asked
),{_LABELLED if labelled else ""}
answered as (  -- customers' taps on the platform's clock, the welcome's stamp on the bot's: an allowance
    select *,
           {_first(_E.COUPON_REQUESTED, "entry - $allowance_us", "entry + $window_us")} as requested,
           {_first(_E.DECLINED, "entry - $allowance_us", "entry + $window_us")} as declined
    from (select *, {_firsts(*_LATER_STEP_EVENTS)} from {"labelled" if labelled else "chosen"}
          where entry is not null) as entered
),
after_request as (
    select *,
           {_first(_E.COUPON_REVEALED, "requested", "entry + $window_us")} as revealed,
           {_first(_E.COUPON_SENT, "requested", "$end_of_time")} as coupon_sent
    from answered
),
-- Kept once, without the lists (left to itself DuckDB kept `chosen`, lists and all: 10 % slower). The
-- redemption is on the bot's clock, the reveal on the platform's: an allowance.
journey_times as materialized (
    select campaign_id, customer, entry, requested, declined, revealed, coupon_sent,
           {_first(_E.COUPON_REDEEMED, "revealed - $allowance_us", "entry + $window_us")} as redeemed{labels}
    from after_request
),
read_after as (  -- the first read of the coupon: the coupon is the page's first message after the Yes tap,
    select a.campaign_id, a.customer, min(r.read_us) as read_us  -- so a watermark past the tap covers it
    from journey_times a                                          -- (both the platform's times); a coupon
    join reads r                                                  -- never sent was never read
      on r.campaign_id = a.campaign_id and r.customer = a.customer and a.coupon_sent is not null
     and r.watermark_us > a.requested and r.read_us <= a.entry + $window_us
    group by a.campaign_id, a.customer
),
journey_steps as (  -- one row per journey; each step's time or null
    select a.campaign_id, a.customer, a.entry,
           a.entry as reached,
           {_earliest("a.requested", "a.declined")} as responded,
           a.requested as coupon_requested,
           {_earliest("a.revealed", "r.read_us")} as coupon_seen,
           a.revealed as coupon_revealed,
           a.redeemed,
           a.declined{", a.source, a.variant" if labelled else ""}
    from journey_times a
    left join read_after r on r.campaign_id = a.campaign_id and r.customer = a.customer
)
"""


# Customers in several campaigns are grouped; the others (nearly all) pass as they are, which saves a
# grouping of every customer. MULTI_CAMPAIGN_CUSTOMERS is kept beside the journeys.
MULTI_CAMPAIGN_CUSTOMERS = "select customer from journeys group by customer having count(*) > 1"


def customer_steps(labelled: bool = False, several: bool = True) -> str:
    """A question's customers and the time of each step (CUSTOMER_STEPS); `labelled`: with `source` and
    `variant` columns, of the journeys of the question's source and variant only. A customer in several
    campaigns is under the source of their earliest entry, and has a variant only with one journey.
    `several=False` when no customer is in several campaigns (MULTI_CAMPAIGN_CUSTOMERS is empty): the
    same answer, without looking them up."""
    # Entries at the same µs in two campaigns (never from one bot, but possible in data): the smallest source.
    earliest = "lpad(cast(entry as varchar), 20, '0') || source"
    one_variant = "case when count(*) = 1 then min(variant) end"
    labels = ("source, variant, ", f" arg_min(source, {earliest}), {one_variant},")
    single, grouped = labels if labelled else ("", "")
    steps = ", ".join(f"{step} as {step}_at, {_offset(step)} as {step}_us" for step in STEPS)
    ones = f"""
select customer, entry, {single}{steps}
from journey_steps"""
    if not several:
        return f"with {_journey_steps(labelled)}{ones}\n"
    return f"""
with {_journey_steps(labelled)}{ones}
where customer not in (select customer from multi_campaign_customers)
union all
select customer, min(entry),{grouped}
       {", ".join(f"min({step}) as {step}_at, min({_offset(step)}) as {step}_us" for step in STEPS)}
from journey_steps
where customer in (select customer from multi_campaign_customers)
group by customer
"""


CUSTOMER_STEPS = customer_steps()

FUNNEL = (
    "select "
    + ",\n".join(
        f"count({step}_us) as {step}_customers, "
        f"quantile_cont({step}_us, 0.5) as {step}_median, quantile_cont({step}_us, 0.9) as {step}_p90"
        for step in STEPS
    )
    + " from customer_steps"
)


# Journeys one by one (a customer in two campaigns has two), for analysts and exports.
def journey_list(labelled: bool = False) -> str:
    """JOURNEY_LIST; `labelled`: of the question's source and variant only, with their `source` and
    `variant`."""
    return f"""
with {_journey_steps(labelled)},
customer_ids as (
    select hash(customer_id) as customer, min(customer_id) as customer_id
    from raw_events
    where event = '{_E.WELCOME_SENT}'
    group by hash(customer_id)
)
select j.campaign_id, c.customer_id, make_timestamp(j.entry)::timestamptz as entry_ts,
       {", ".join(f"make_timestamp(j.{step})::timestamptz as {step}" for step in STEPS)}{
        ", j.source, j.variant" if labelled else ""
    }
from journey_steps j
join customer_ids c on c.customer = j.customer
order by entry_ts, customer_id, campaign_id
"""


JOURNEY_LIST = journey_list()

TIMELINE = f"""
with reached as (  -- each step's customers by quarter hour of UTC
    select quarter, step, position, count(*) as customers
    from ({
    " union all ".join(
        f"select {_quarter(f'{step}_at')} as quarter, '{step}' as step, {index} as position "
        f"from customer_steps where {step}_at is not null"
        for index, step in enumerate(STEPS)
    )
}) as times
    group by quarter, step, position
)
select d.day, r.step, cast(sum(r.customers) as bigint) as customers
from reached r
join ({_quarter_days("reached")}) as d on d.quarter = r.quarter
group by d.day, r.step, r.position
order by d.day, r.position
"""


def cohorts(period: str, step: str = FunnelStep.COUPON_REVEALED) -> str:
    """Customers by the period of their entry; who reached `step` (revealed the coupon, by default) in
    period k after it.

    Raises:
        AnalyticsError: a period not in PERIODS (date_trunc needs it as a constant in the text), or a step
            not in STEPS (its column is named in the text).
    """
    if period not in PERIODS:
        raise AnalyticsError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    if step not in STEPS:
        raise AnalyticsError(f"step must be one of {', '.join(STEPS)}, not {step!r}")
    truncate = f"date_trunc('{period}', cast(%s.day as timestamp))"
    quarters = (
        "(select entry_quarter as quarter from times union all select step_quarter from times) as quarters"
    )
    return f"""
    with times as (
        select customer, {_quarter("entry")} as entry_quarter, {_quarter(f"{step}_at")} as step_quarter
        from customer_steps
    ),
    days as ({_quarter_days(quarters)}),
    members as (
        select t.customer, {truncate % "e"} as cohort,
               date_diff('{period}', {truncate % "e"}, {truncate % "s"}) as converted_in
        from times t
        join days e on e.quarter = t.entry_quarter
        left join days s on s.quarter = t.step_quarter
    ),
    sizes as (select cohort, count(*) as cohort_size from members group by cohort),
    horizon as (  -- the last event in the data: periods ending after it are not complete yet
        select max(ts) at time zone $tz as last_ts
        from raw_events where $campaign is null or campaign_id = $campaign
    ),
    grid as (
        select cohort, cohort_size,
               unnest(generate_series(0, date_diff('{period}', cohort,
                                                   date_trunc('{period}', (select last_ts from horizon)))))
                   as k
        from sizes
    )
    select cast(g.cohort as date) as cohort, cast(g.k as integer) as period,
           count(m.customer) as customers,
           {_share("count(m.customer)", "g.cohort_size")} as share,
           g.cohort + to_{period}s(cast(g.k + 1 as integer)) <= (select last_ts from horizon) as complete,
           g.cohort_size
    from grid g left join members m on m.cohort = g.cohort and m.converted_in = g.k
    group by g.cohort, g.k, g.cohort_size
    order by g.cohort, g.k
    """


_OF_CUSTOMERS = "\n      and hash(customer_id) in (select customer from customer_steps)"


# Clicks on a day in the range, once per event; the step a button stands for is the event it was stored as.
# Of a question's source or variant: the clicks of its customers (those of `customer_steps`).
def buttons(labelled: bool = False) -> str:
    """BUTTONS; `labelled`: the clicks of the customers of the question's source and variant."""
    return f"""
with clicks as (
    select button, event as step, count(distinct event_id) as clicks, count(distinct customer_id) as customers
    from raw_events
    where button is not null
      and ($campaign is null or campaign_id = $campaign)
      and epoch_us(ts) >= $start_us and epoch_us(ts) < $end_us{_OF_CUSTOMERS if labelled else ""}
    group by button, event
)
select button, clicks, customers, {_share("clicks", "sum(clicks) over ()")} as share, step
from clicks
order by clicks desc, button
"""


BUTTONS = buttons()


# Reveals that found every single-use code handed out (each answered with `all_gone`), on days in the range.
def pool_empty(labelled: bool = False) -> str:
    """POOL_EMPTY; `labelled`: the reveals of the customers of the question's source and variant."""
    return f"""
select campaign_id, count(distinct event_id) as reveals, count(distinct customer_id) as customers,
       min(ts) as first_seen, max(ts) as last_seen
from raw_events
where event = '{_E.COUPON_POOL_EMPTY}'
  and ($campaign is null or campaign_id = $campaign)
  and epoch_us(ts) >= $start_us and epoch_us(ts) < $end_us{_OF_CUSTOMERS if labelled else ""}
group by campaign_id
order by campaign_id
"""


POOL_EMPTY = pool_empty()

# -- sources and experiments -------------------------------------------------------------------------------

# The funnel by the source of each customer's entry (labelled customer_steps), with the latest title of an ad.
SOURCES = f"""
with titles as (
    select source, arg_max(json_extract_string(detail, '$.ad_title'), ts) as title
    from raw_events
    where event = '{_E.CONVERSATION_STARTED}' and source like '{AD_SOURCE_PREFIX}%'
      and json_extract_string(detail, '$.ad_title') is not null
    group by source
)
select s.source, t.title, {", ".join(f"count(s.{step}_at) as {step}" for step in STEPS)}
from customer_steps s
left join titles t on t.source = s.source
group by s.source, t.title
order by {STEPS[0]} desc, s.source
"""

# Each campaign's variants and their planned shares, as its latest conversation recorded them (the bot writes
# the campaign file's `variants` into each `conversation_started`'s detail; the first is the reference).
VARIANT_PLANS = f"""
select campaign_id, arg_max(json_extract_string(detail, '$.variants'), ts) as variants
from raw_events
where event = '{_E.CONVERSATION_STARTED}' and json_extract_string(detail, '$.variants') is not null
group by campaign_id
order by campaign_id
"""


def _experiment_members(step: str) -> str:
    """The common table expressions of an experiment's customers (labelled customer_steps of one campaign):
    each with its variant, whether it reached `step`, declined, had a send fail in its window, and whether
    it is excluded: exposed to two variants (`mixed`), or put in its variant by a link (`forced`)."""
    return f"""
    exposures as (  -- every welcome in the campaign, in or out of the question's range
        select customer, count(distinct variant) as variants
        from welcomes
        where campaign_id = $campaign and variant is not null
        group by customer
    ),
    forced as (
        select distinct hash(customer_id) as customer
        from raw_events
        where event = '{_E.CONVERSATION_STARTED}' and campaign_id = $campaign
          and json_extract_string(detail, '$.variant_forced') = 'true'
    ),
    failures as (
        select hash(customer_id) as customer, epoch_us(ts) as at_us
        from raw_events
        where event = '{_E.SEND_FAILED}' and campaign_id = $campaign
    ),
    failed as (  -- a send that failed in the journey's window (the bot's clock, as the entry)
        select distinct s.customer
        from customer_steps s
        join failures f on f.customer = s.customer and f.at_us >= s.entry and f.at_us <= s.entry + $window_us
    ),
    members as (
        select s.customer, s.variant, s.entry,
               s.{step}_at is not null as converted,
               s.{FunnelStep.DECLINED}_at is not null as declined,
               coalesce(e.variants, 0) > 1 as mixed,
               fo.customer is not null as forced,
               fa.customer is not null as failed
        from customer_steps s
        left join exposures e on e.customer = s.customer
        left join forced fo on fo.customer = s.customer
        left join failed fa on fa.customer = s.customer
        where s.variant is not null
    )
    """


def _experiment_step(step: str) -> str:
    if step not in STEPS or step == STEPS[0]:
        raise AnalyticsError(f"step must be one of {', '.join(STEPS[1:])}, not {step!r}")
    return step


def experiment(step: str = FunnelStep.COUPON_REVEALED) -> str:
    """An experiment's customers by variant and exclusion: variant, mixed, forced, customers, conversions
    (at `step`), declined, send_failed.

    Raises:
        AnalyticsError: a step not in STEPS after `reached` (its column is named in the text).
    """
    return f"""
    with {_experiment_members(_experiment_step(step))}
    select variant, mixed, forced, count(*) as customers,
           count(case when converted then 1 end) as conversions,
           count(case when declined then 1 end) as declined,
           count(case when failed then 1 end) as send_failed
    from members
    group by variant, mixed, forced
    order by variant, mixed, forced
    """


def experiment_days(step: str = FunnelStep.COUPON_REVEALED) -> str:
    """An experiment's compared customers (neither mixed nor forced) by the day of their entry (in the
    question's zone) and variant: day, variant, customers, conversions (at `step`).

    Raises:
        AnalyticsError: a step not in STEPS after `reached`.
    """
    return f"""
    with {_experiment_members(_experiment_step(step))}
    select {_local_day("entry")} as day, variant, count(*) as customers,
           count(case when converted then 1 end) as conversions
    from members
    where not mixed and not forced
    group by {_local_day("entry")}, variant
    order by day, variant
    """


CAMPAIGNS = """
select campaign_id, min(ts) as first_seen, max(ts) as last_seen, count(distinct customer_id) as customers
from raw_events
group by campaign_id
order by first_seen, campaign_id
"""

__all__ = [
    "AD_SOURCE_PREFIX",
    "BUTTONS",
    "CAMPAIGNS",
    "CUSTOMER_STEPS",
    "EVENTS_VIEW",
    "FUNNEL",
    "JOURNEYS",
    "JOURNEY_LIST",
    "MERGE_JOURNEYS",
    "MULTI_CAMPAIGN_CUSTOMERS",
    "PERIODS",
    "POOL_EMPTY",
    "PREVIOUS_STEP",
    "READS",
    "SOURCES",
    "STEPS",
    "TIMELINE",
    "UNKNOWN_SOURCE",
    "VARIANT_PLANS",
    "WELCOMES",
    "buttons",
    "cohorts",
    "customer_steps",
    "experiment",
    "experiment_days",
    "journey_list",
    "pool_empty",
    "raw_events",
]
