-- Fleet quick start: pushed from outpost-server to every gateway labelled
-- site=demo (README). Alerts when a sensor's 5-second average is below 22 °C.
CREATE RULE demo_cold AS
SELECT deviceid() AS device, round(avg(temp), 2) AS avg_temp
FROM 'sensors/+/telemetry'
GROUP BY deviceid(), TUMBLINGWINDOW(ss, 5)
HAVING avg(temp) < 22
DO REPUBLISH 'demo/cold/${device}';
