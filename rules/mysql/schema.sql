-- antispider MySQL/MariaDB schema (SPEC §2.2, §5, §6).
--
-- The rule tables keep the original system's table and column names (gciantispider), so an
-- existing admin UI keeps working; the engine reads them with src/rules/mysql.rs when
-- `[mysql] rules = true`, re-reading after a Redis change flag was set. seed.sql inserts the
-- project's default rules (the same rows as rules/*.toml).
--
--   mariadb antispider < rules/mysql/schema.sql && mariadb antispider < rules/mysql/seed.sql

SET NAMES utf8mb4;

-- A request line that fully matches `value` (a regex) is dropped.
CREATE TABLE IF NOT EXISTS nh_filter_rule (
  id    BIGINT        NOT NULL PRIMARY KEY,
  value VARCHAR(1024) NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- flight_type 0 domestic / 1 international; operation_type 0 query / 1 book.
CREATE TABLE IF NOT EXISTS nh_classify_rule (
  id             BIGINT        NOT NULL PRIMARY KEY,
  expression     VARCHAR(1024) NOT NULL,
  flight_type    INT           NOT NULL,
  operation_type INT           NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- How to parse query/book bodies. The original stored the body encoding as text booleans
-- ('true'/'false': isNormalGet, isNormalForm, isApplicationJson, isTextXml, isJson, isXML);
-- body_kind (form, json_in_form, json, xml, xml_in_form, get) is this project's column and
-- wins when set; when it is NULL or empty the kind is derived from the booleans.
CREATE TABLE IF NOT EXISTS analyzerule (
  id                     BIGINT        NOT NULL PRIMARY KEY,
  flight_type            INT           NOT NULL,
  behavior_type          INT           NOT NULL,
  body_kind              VARCHAR(16)   NULL,
  requestMatchExpression VARCHAR(1024) NOT NULL,
  requestMethod          VARCHAR(64)   NOT NULL DEFAULT '',
  formDataField          VARCHAR(64)   NOT NULL DEFAULT '',
  book_bookUserId        VARCHAR(256)  NOT NULL DEFAULT '',
  book_bookUnUserId      VARCHAR(256)  NOT NULL DEFAULT '',
  book_psgName           VARCHAR(256)  NOT NULL DEFAULT '',
  book_psgType           VARCHAR(256)  NOT NULL DEFAULT '',
  book_idType            VARCHAR(256)  NOT NULL DEFAULT '',
  book_idCard            VARCHAR(256)  NOT NULL DEFAULT '',
  book_contractName      VARCHAR(256)  NOT NULL DEFAULT '',
  book_contractPhone     VARCHAR(256)  NOT NULL DEFAULT '',
  book_depCity           VARCHAR(256)  NOT NULL DEFAULT '',
  book_arrCity           VARCHAR(256)  NOT NULL DEFAULT '',
  book_flightDate        VARCHAR(256)  NOT NULL DEFAULT '',
  book_flightNo          VARCHAR(256)  NOT NULL DEFAULT '',
  book_cabin             VARCHAR(256)  NOT NULL DEFAULT '',
  book_psgFirName        VARCHAR(256)  NOT NULL DEFAULT '',
  query_depCity          VARCHAR(256)  NOT NULL DEFAULT '',
  query_arrCity          VARCHAR(256)  NOT NULL DEFAULT '',
  query_flightDate       VARCHAR(256)  NOT NULL DEFAULT '',
  query_adultNum         VARCHAR(256)  NOT NULL DEFAULT '',
  query_childNum         VARCHAR(256)  NOT NULL DEFAULT '',
  query_infantNum        VARCHAR(256)  NOT NULL DEFAULT '',
  query_country          VARCHAR(256)  NOT NULL DEFAULT '',
  query_travelType       VARCHAR(256)  NOT NULL DEFAULT '',
  isNormalGet            VARCHAR(8)    NOT NULL DEFAULT 'false',
  isNormalForm           VARCHAR(8)    NOT NULL DEFAULT 'false',
  isApplicationJson      VARCHAR(8)    NOT NULL DEFAULT 'false',
  isTextXml              VARCHAR(8)    NOT NULL DEFAULT 'false',
  isJson                 VARCHAR(8)    NOT NULL DEFAULT 'false',
  isXML                  VARCHAR(8)    NOT NULL DEFAULT 'false'
) DEFAULT CHARSET = utf8mb4;

-- Requests fully matching the expression are critical pages.
CREATE TABLE IF NOT EXISTS nh_query_critical_pages (
  id                          BIGINT        NOT NULL PRIMARY KEY,
  criticalPageMatchExpression VARCHAR(1024) NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- Historical crawler IPs (exact IPs or CIDR blocks). The engine inserts the IPs it
-- blacklists once (INSERT IGNORE on the unique ip_name).
CREATE TABLE IF NOT EXISTS nh_ip_blacklist (
  id      BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ip_name VARCHAR(64) NOT NULL,
  UNIQUE KEY uk_ip_name (ip_name)
) DEFAULT CHARSET = utf8mb4;

-- Flows ("processes"); status 0 = running.
CREATE TABLE IF NOT EXISTS nh_process_info (
  id            VARCHAR(64)  NOT NULL PRIMARY KEY,
  process_name  VARCHAR(255) NOT NULL,
  create_date   DATETIME     NULL,
  create_person VARCHAR(64)  NULL,
  status        INT          NOT NULL DEFAULT 1
) DEFAULT CHARSET = utf8mb4;

-- Per-flow thresholds; id = nh_process_info.id.
CREATE TABLE IF NOT EXISTS nh_strategy (
  id                           VARCHAR(64) NOT NULL PRIMARY KEY,
  crawler_blacklist_thresholds DOUBLE      NOT NULL,
  occ_blacklist_thresholds     DOUBLE      NULL
) DEFAULT CHARSET = utf8mb4;

-- A flow's rules. rule_name 0..7 (nh_rules_maintenance_table), score 1..10, status 0 = enabled,
-- crawler_type 0 = anti-crawler, rule_type 0 = real-time.
CREATE TABLE IF NOT EXISTS nh_rule (
  id           VARCHAR(64) NOT NULL PRIMARY KEY,
  process_id   VARCHAR(64) NOT NULL,
  rule_type    INT         NOT NULL DEFAULT 0,
  crawler_type INT         NOT NULL DEFAULT 0,
  rule_name    INT         NOT NULL,
  arg0         DOUBLE      NOT NULL,
  arg1         DOUBLE      NULL,
  score        INT         NOT NULL,
  status       INT         NOT NULL DEFAULT 0,
  KEY idx_process (process_id)
) DEFAULT CHARSET = utf8mb4;

-- Rule number -> indicator name (SPEC §4).
CREATE TABLE IF NOT EXISTS nh_rules_maintenance_table (
  rule_name      INT         NOT NULL PRIMARY KEY,
  rule_real_name VARCHAR(64) NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- Service anomalies (SPEC §6): which requests belong to which app (the first row by id whose
-- patterns all match; empty = any) ...
CREATE TABLE IF NOT EXISTS service_app_rule (
  id          BIGINT        NOT NULL PRIMARY KEY,
  appid       VARCHAR(128)  NOT NULL,
  server_addr VARCHAR(255)  NOT NULL DEFAULT '',
  host        VARCHAR(255)  NOT NULL DEFAULT '',
  url_regex   VARCHAR(1024) NOT NULL DEFAULT ''
) DEFAULT CHARSET = utf8mb4;

-- ... and the normal-sample rule (appid NULL = every app without a row of its own).
CREATE TABLE IF NOT EXISTS service_normal_rule (
  id                BIGINT       NOT NULL PRIMARY KEY,
  appid             VARCHAR(128) NULL,
  response_time_max DOUBLE       NOT NULL DEFAULT 1.2,
  fail_rate_max     DOUBLE       NOT NULL DEFAULT 0.2
) DEFAULT CHARSET = utf8mb4;

-- Service-anomaly results (SPEC §6): one row per (app, sample minute, algorithm, model).
CREATE TABLE IF NOT EXISTS cat_result_data (
  id             BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
  appid          VARCHAR(128) NOT NULL,
  sample_time_ms BIGINT      NOT NULL,
  cluster        INT         NULL,
  distance       DOUBLE      NULL,
  score          DOUBLE      NULL,
  is_anomaly     TINYINT(1)  NOT NULL,
  algorithm      VARCHAR(32) NOT NULL,
  model_version  VARCHAR(64) NOT NULL,
  created_at     TIMESTAMP   NOT NULL DEFAULT CURRENT_TIMESTAMP,
  UNIQUE KEY uk_sample (appid, sample_time_ms, algorithm, model_version),
  KEY idx_app_time (appid, sample_time_ms)
) DEFAULT CHARSET = utf8mb4;

-- Operator feedback on samples ("this was normal" / "this was an anomaly"): labels for the
-- random forest (SPEC §6), read by the engine when `[mysql] feedback = true`
-- (src/anomaly/feedback.rs): all rows at start, then every `poll_interval_ms` the rows with a
-- higher id. Append-only: to change a verdict insert a new row for the same sample (the
-- highest id wins). sample_time_ms is any epoch millisecond inside the sample's minute;
-- label is 'normal' or 'anomalous' ('anomaly' and 'abnormal' are accepted too). Rows the
-- engine cannot use go to OUT/feedback_deadletter.jsonl with the reason.
CREATE TABLE IF NOT EXISTS cat_feedback (
  id             BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
  appid          VARCHAR(128)  NOT NULL,
  sample_time_ms BIGINT        NOT NULL,
  label          VARCHAR(16)   NOT NULL,
  note           VARCHAR(1024) NULL,
  created_by     VARCHAR(64)   NULL,
  created_at     TIMESTAMP     NOT NULL DEFAULT CURRENT_TIMESTAMP,
  KEY idx_sample (appid, sample_time_ms)
) DEFAULT CHARSET = utf8mb4;
