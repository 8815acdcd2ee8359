-- Average temperature per device over 10 s; alarm above 80 °C.
CREATE RULE overheat VERSION 3
AS SELECT deviceid() AS device_id, avg(temp) AS avg_temp, max(temp) AS max_temp, count(*) AS n
   FROM 'factory/+/sensors/#'
   WHERE temp IS NOT NULL AND quality = 'good'
   GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10)
   HAVING avg(temp) > 80
   DO UPLINK LANE 'alarms' TOPIC 'alerts/overheat',
      REPUBLISH 'local/alerts/${device_id}';

-- Canary: version 4 also reports the minimum, on devices labelled canary=true.
CREATE RULE overheat VERSION 4
FOR DEVICES WHERE labels.canary = 'true'
AS SELECT deviceid() AS device_id, avg(temp) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp, count(*) AS n
   FROM 'factory/+/sensors/#'
   WHERE temp IS NOT NULL AND quality = 'good'
   GROUP BY deviceid(), TUMBLINGWINDOW(ss, 10)
   HAVING avg(temp) > 80
   DO UPLINK LANE 'alarms' TOPIC 'alerts/overheat',
      REPUBLISH 'local/alerts/${device_id}';
