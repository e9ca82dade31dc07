# Helpers shared by load.sh and front.sh for their summaries (loaded with awk -f before
# each script's own program).

function us(t) { # wrk latency text ("812.00us", "1.25ms", "2.00s") to microseconds; -1 if none
  if (t ~ /us$/) return substr(t, 1, length(t) - 2) + 0
  if (t ~ /ms$/) return substr(t, 1, length(t) - 2) * 1000
  if (t ~ /s$/) return substr(t, 1, length(t) - 1) * 1000000
  return -1
}

function latency(l) { # microseconds back to text: "?" for none, µs below 1 ms, else ms
  return l < 0 ? "?" : l < 1000 ? sprintf("%.0fus", l) : sprintf("%.2fms", l / 1000)
}

function median(list,   v, n, i, j, t) { # of a space-separated list of numbers
  n = split(list, v, " ")
  for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
  return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}

function range(list,   v, n, i, lo, hi) { # "min-max" of a space-separated list of numbers
  n = split(list, v, " "); lo = hi = v[1]
  for (i = 2; i <= n; i++) { if (v[i] + 0 < lo + 0) lo = v[i]; if (v[i] + 0 > hi + 0) hi = v[i] }
  return sprintf("%.2f-%.2f", lo, hi)
}
