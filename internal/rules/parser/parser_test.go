package parser

import (
	"strings"
	"testing"
	"time"
)

const overheat = `-- rules/overheat.sql
CREATE RULE overheat VERSION 3
AS SELECT deviceid() AS device_id, avg(temp) AS avg_temp, max(temp) AS max_temp, count(*) AS n
   FROM 'factory/+/sensors/#'
   WHERE temp IS NOT NULL AND quality = 'good'
   GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10)
   HAVING avg(temp) > 80
   DO UPLINK LANE 'alarms' TOPIC 'alerts/overheat',
      REPUBLISH 'local/alerts/${device_id}' WITH (qos = 1, retain = true);

CREATE RULE overheat VERSION 4 FOR DEVICES WHERE labels.canary = 'true'
AS SELECT *, payload.a.b[0] AS first, split(s, ',')[1] x FROM 'a/#' DO FILE 'x'`

func TestParseOverheat(t *testing.T) {
	rules, err := Parse("overheat.sql", overheat)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 {
		t.Fatalf("%d rules", len(rules))
	}
	r := rules[0]
	if r.Name != "overheat" || r.Version != 3 || len(r.Columns) != 4 || r.Window == nil ||
		r.Window.Kind != "tumbling" || r.Window.Size != 10*time.Second || len(r.GroupBy) != 1 ||
		r.Having == nil || len(r.Actions) != 2 || r.Actions[0].Lane != "alarms" ||
		r.Actions[1].Options[0].Key != "qos" || r.Columns[3].Alias != "n" {
		t.Errorf("unexpected rule %+v", r)
	}
	if !strings.HasPrefix(r.Source, "CREATE RULE overheat VERSION 3") || !strings.HasSuffix(r.Source, ";") {
		t.Errorf("source %q", r.Source)
	}
	r = rules[1]
	if r.Version != 4 || r.Devices == nil || !r.Columns[0].Star {
		t.Errorf("rule 2 %+v", r)
	}
	if f, ok := r.Columns[1].Expr.(*Field); !ok || f.Path != "a.b[0]" {
		t.Errorf("column 1: %#v", r.Columns[1].Expr)
	}
	if ix, ok := r.Columns[2].Expr.(*Index); !ok || ix.Path != "[1]" || r.Columns[2].Alias != "x" {
		t.Errorf("column 2: %#v", r.Columns[2].Expr)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{"CREATE RULE r AS SELECT a FROM 'x' WHERE a > DO FILE 'f'", "f.sql:1:46: rule r: unexpected DO, expected expression"},
		{"CREATE RULE r AS SELECT a FROM x DO FILE 'f'", "f.sql:1:32: rule r: unexpected identifier x, expected topic filter string"},
		{"CREATE RULE r AS SELECT a FROM 'a/#/b' DO FILE 'f'", "f.sql:1:32: rule r: topic filter 'a/#/b': '#' must be the last level"},
		{"CREATE RULE AS", "f.sql:1:13: unexpected AS, expected rule name"},
		{"CREATE RULE r AS SELECT a FROM 'x' DO SHOUT 'f'", "f.sql:1:39: rule r: unexpected identifier SHOUT, expected action (REPUBLISH, UPLINK, WEBHOOK, FILE, FUNCTION)"},
		{"CREATE RULE r AS SELECT 'abc FROM", "f.sql:1:25: rule r: unterminated string, expected expression"},
		{"CREATE RULE r AS SELECT a FROM 'x' GROUP BY TUMBLINGWINDOW(xx, 1) DO FILE 'f'", "f.sql:1:60: rule r: unexpected identifier xx, expected time unit (ms, ss, mi, hh, dd)"},
		{"CREATE RULE r AS SELECT a FROM 'x' GROUP BY HOPPINGWINDOW(ss, 1) DO FILE 'f'", "f.sql:1:45: rule r: HOPPINGWINDOW takes (unit, size, hop)"},
		{"CREATE RULE r AS SELECT a FROM 'x' DO FILE 'f' garbage", "f.sql:1:48: rule r: unexpected identifier garbage, expected \",\", \";\" or end of rule"},
	}
	for _, tt := range tests {
		_, err := Parse("f.sql", tt.src)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q):\n got %v\nwant %s", tt.src, err, tt.want)
		}
	}
}

func TestParseRecovers(t *testing.T) {
	src := "CREATE RULE a AS SELECT FROM 'x' DO FILE 'f';\nCREATE RULE b AS SELECT x FROM 'x' DO FILE 'f';\nCREATE RULE c AS SELECT ( FROM 'x' DO FILE 'f'"
	rules, err := Parse("f.sql", src)
	if len(rules) != 1 || rules[0].Name != "b" {
		t.Errorf("rules %v", rules)
	}
	if el, ok := err.(ErrorList); !ok || len(el) != 2 || el[0].Rule != "a" || el[1].Rule != "c" {
		t.Errorf("errors %v", err)
	}
}

func TestNestingLimit(t *testing.T) {
	deep := "CREATE RULE r AS SELECT " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000) + " FROM 'x' DO FILE 'f'"
	_, err := Parse("f.sql", deep)
	if err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Errorf("err %v", err)
	}
	deep = "CREATE RULE r AS SELECT " + strings.Repeat("NOT ", 100000) + "1 FROM 'x' DO FILE 'f'"
	if _, err := Parse("f.sql", deep); err == nil {
		t.Error("no error for deep NOT")
	}
	deep = "CREATE RULE r AS SELECT " + strings.Repeat("-", 100000) + "1 FROM 'x' DO FILE 'f'"
	if _, err := Parse("f.sql", deep); err == nil {
		t.Error("no error for deep minus")
	}
}

func TestExprForms(t *testing.T) {
	for _, src := range []string{
		"a IN (1, 2, 'x')", "a NOT BETWEEN 1 AND 2", "s LIKE 'a%'", "s NOT LIKE '_b'",
		"CASE WHEN a > 1 THEN 'big' ELSE 'small' END", "CASE a WHEN 1 THEN 'one' END",
		"CAST(a AS int) + 1", "a.b[0].c * -2 % 3", "`weird key` || 'x'", "\"a.b\".c", "labels.site = 'x'",
		"topic(2)", "count(*)", "NOT a OR b AND c", "a IS NULL", "1e3 + .5",
	} {
		if _, err := ParseExpr(src, Pos{1, 1}); err != nil {
			t.Errorf("ParseExpr(%q): %v", src, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(overheat)
	f.Add("CREATE RULE r AS SELECT a FROM 'x' GROUP BY SESSIONWINDOW(ss, 5, 60) TIMESTAMP BY ts LATENESS(ss, 2) DO FILE 'f'")
	f.Add("CREATE RULE r AS SELECT CASE WHEN a IN (1,2) THEN x[0].y ELSE NULL END FROM 'x/+' DO WEBHOOK 'http://h' WITH (HEADER 'A' = 'b', retries = 3)")
	f.Add(strings.Repeat("(", 200))
	f.Fuzz(func(t *testing.T, src string) {
		rules, err := Parse("f.sql", src)
		if err == nil {
			for _, r := range rules {
				if r.Name == "" || len(r.From) == 0 || len(r.Actions) == 0 {
					t.Fatalf("incomplete rule without error: %+v", r)
				}
			}
		}
		ParseExpr(src, Pos{1, 1})
	})
}
