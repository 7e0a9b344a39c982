"""PostgreSQL functions for the hot path: one statement per TransactionEvent.

Why: through ``PgConnection`` a TransactionEvent with three samples costs ~11 statements, each
a network round trip and ~50 µs of Python in the storage thread (GIL shared with the event
loop) plus the server's parse/bind/execute; at 1,000 events/s that was more than a core. One
function call does the same work inside the server, with plans cached per connection.

This is a second spelling of ``sql_tx.transaction_event`` and ``plausibility.check_sample``:
the same statements, in the same order, with the same rules. Python still normalises the
input (``sql_tx._sample_row``, ``norm_ts``), so units, multipliers and timestamps cannot
drift; ``tests/test_csms_pg.py`` runs one event sequence that raises every flag on both
engines and requires identical rows. Change one spelling, change both.

Names carry a version (``_v1``): instances of an older release keep calling their own while
a newer one is rolled out; a change is a new name, never a replaced body.
"""

from __future__ import annotations

_CHECK_SAMPLE = """
CREATE OR REPLACE FUNCTION mwc_check_sample_v1(
    p_pk BIGINT, p_ts TEXT, p_m TEXT, p_phase TEXT, p_loc TEXT, p_value DOUBLE PRECISION,
    p_max DOUBLE PRECISION) RETURNS TEXT LANGUAGE plpgsql AS $fn$
DECLARE
    prev_ts TEXT; prev_v DOUBLE PRECISION; nxt DOUBLE PRECISION; dt DOUBLE PRECISION;
BEGIN
    IF p_value IS NULL THEN RETURN NULL; END IF;
    IF p_m = 'Power.Active.Import' THEN
        RETURN CASE WHEN abs(p_value) > p_max THEN 'power_over_rating' END;
    END IF;
    IF p_pk IS NULL OR p_m <> 'Energy.Active.Import.Register' OR p_phase IS NOT NULL
       OR (p_loc IS NOT NULL AND p_loc <> 'Outlet') THEN
        RETURN NULL;
    END IF;
    IF p_value < 0 THEN RETURN 'energy_negative'; END IF;
    SELECT timestamp, value INTO prev_ts, prev_v FROM meter_values
     WHERE tx_pk = p_pk AND measurand = p_m AND phase IS NULL
       AND (location IS NULL OR location = 'Outlet') AND value IS NOT NULL AND flag IS NULL
       AND timestamp <= p_ts ORDER BY timestamp DESC, id DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT started_at, meter_start_wh INTO prev_ts, prev_v FROM transactions
         WHERE id = p_pk AND meter_start_wh IS NOT NULL AND started_at IS NOT NULL
           AND started_at <= p_ts;
    END IF;
    IF prev_v IS NOT NULL THEN
        IF p_value < prev_v THEN RETURN 'energy_decreasing'; END IF;
        -- timestamps are norm_ts() output; anything else is text Python could not parse
        IF prev_ts ~ '^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z$'
           AND p_ts ~ '^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z$' THEN
            dt := extract(epoch FROM (p_ts::timestamptz - prev_ts::timestamptz));
            IF p_value - prev_v > p_max * greatest(dt, 0) / 3600 + 10.0 THEN
                RETURN 'energy_rate_over_rating';
            END IF;
        END IF;
    END IF;
    SELECT value INTO nxt FROM meter_values
     WHERE tx_pk = p_pk AND measurand = p_m AND phase IS NULL
       AND (location IS NULL OR location = 'Outlet') AND value IS NOT NULL AND flag IS NULL
       AND timestamp > p_ts ORDER BY timestamp, id LIMIT 1;
    IF nxt IS NOT NULL AND p_value > nxt THEN RETURN 'energy_decreasing'; END IF;
    RETURN NULL;
END $fn$
"""

# Returns NULL for a repeated (transactionId, seqNo), else the flags raised (maybe none).
# p_samples: JSON array of [timestamp, measurand, phase, location, context, unit, value, raw].
_TX_EVENT = """
CREATE OR REPLACE FUNCTION mwc_tx_event_v1(
    p_station TEXT, p_tx TEXT, p_seq BIGINT, p_type TEXT, p_trigger TEXT, p_ts TEXT,
    p_payload TEXT, p_now TEXT, p_evse BIGINT, p_connector BIGINT, p_token TEXT,
    p_stopped TEXT, p_state TEXT, p_default_w DOUBLE PRECISION, p_margin DOUBLE PRECISION,
    p_samples JSONB) RETURNS TEXT[] LANGUAGE plpgsql AS $fn$
DECLARE
    v_pk BIGINT; v_rating DOUBLE PRECISION; v_max DOUBLE PRECISION; v_flag TEXT;
    v_flags TEXT[] := '{}'; v_ended BOOLEAN := p_type = 'Ended'; s JSONB;
    v_value DOUBLE PRECISION;
BEGIN
    SELECT rated_power_w INTO v_rating FROM stations WHERE id = p_station;
    v_max := COALESCE(v_rating, p_default_w) * p_margin;
    INSERT INTO transactions (station_id, transaction_id, ocpp_version, updated_at)
         VALUES (p_station, p_tx, '2.0.1', p_now)
    ON CONFLICT (station_id, transaction_id) DO UPDATE SET updated_at = excluded.updated_at
    RETURNING id INTO v_pk;
    INSERT INTO transaction_events (tx_pk, seq_no, event_type, trigger_reason, timestamp,
                                    payload, received_at)
         VALUES (v_pk, p_seq, p_type, p_trigger, p_ts, p_payload, p_now)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN RETURN NULL; END IF;
    UPDATE transactions SET
        evse_id = COALESCE(evse_id, p_evse), connector_id = COALESCE(connector_id, p_connector),
        id_token = CASE WHEN p_token IS NOT NULL THEN p_token ELSE id_token END,
        started_at = CASE WHEN started_at IS NULL OR p_ts < started_at THEN p_ts
                          ELSE started_at END,
        ended_at = CASE WHEN v_ended THEN p_ts ELSE ended_at END,
        stop_reason = CASE WHEN v_ended THEN COALESCE(p_stopped, stop_reason, 'Local')
                           ELSE stop_reason END,
        charging_state = CASE WHEN last_seq_no IS NULL OR p_seq >= last_seq_no
                              THEN COALESCE(p_state, charging_state) ELSE charging_state END,
        last_seq_no = GREATEST(COALESCE(last_seq_no, -1), p_seq),
        updated_at = p_now
     WHERE id = v_pk;
    FOR s IN SELECT e FROM jsonb_array_elements(p_samples) WITH ORDINALITY AS t(e, n)
             ORDER BY n LOOP
        v_value := (s->>6)::DOUBLE PRECISION;
        v_flag := mwc_check_sample_v1(v_pk, s->>0, s->>1, s->>2, s->>3, v_value, v_max);
        INSERT INTO meter_values (station_id, tx_pk, evse_id, timestamp, measurand, phase,
                                  location, context, unit, value, raw, source, flag)
             VALUES (p_station, v_pk, p_evse, s->>0, s->>1, s->>2, s->>3, s->>4, s->>5,
                     v_value, s->>7, 'TransactionEvent', v_flag);
        IF v_flag IS NOT NULL THEN v_flags := v_flags || v_flag; END IF;
    END LOOP;
    RETURN v_flags;
END $fn$
"""

FUNCTIONS: tuple[str, ...] = (_CHECK_SAMPLE, _TX_EVENT)

TX_EVENT_SQL = ("SELECT mwc_tx_event_v1(?::text, ?::text, ?::bigint, ?::text, ?::text,"
                " ?::text, ?::text, ?::text, ?::bigint, ?::bigint, ?::text, ?::text, ?::text,"
                " ?::float8, ?::float8, ?::jsonb)")
