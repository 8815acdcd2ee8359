-- Demo: alert when a sensor's 5-second average temperature is above 30 °C.
CREATE RULE demo_hot AS
SELECT deviceid() AS device, round(avg(temp), 2) AS avg_temp, count(*) AS n
FROM 'sensors/+/telemetry'
GROUP BY deviceid(), TUMBLINGWINDOW(ss, 5)
HAVING avg(temp) > 30
DO REPUBLISH 'demo/alerts/${device}';
