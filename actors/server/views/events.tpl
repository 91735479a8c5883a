% rebase('layout.tpl', title=title, refresh=refresh)
<h1>Events <small>the latest {{n}}, newest first; refreshes every {{refresh}} s</small></h1>
<form class="filters" action="/events" method="get">
<label>topic prefix <input name="topic" value="{{prefix}}" size="18"></label>
<label>rows <input name="n" value="{{n}}" size="4" inputmode="numeric"></label>
<label><input type="checkbox" name="health" value="1"{{!' checked' if with_health else ''}}> heartbeats</label>
<button type="submit">show</button>
</form>
<div class="scroll"><table class="events">
<tr><th>#</th><th>logged (UTC)</th><th>verdict</th><th>topic</th><th>sender</th><th>body</th></tr>
% import json
% for e in rows:
<tr class="v-{{e['verdict']}}"><td>{{e['log_seq']}}</td><td>{{when(e['logged'], ms=True)}}</td><td>{{e['verdict']}}{{(': ' + str(e['code'])) if e.get('code') else ''}}</td><td>{{e['topic']}}</td><td>{{e['sender'] or '-'}}</td><td class="body">{{json.dumps(e['body'], sort_keys=True, default=str)[:300] if e['body'] is not None else (e.get('reason') or '')}}</td></tr>
% end
% if not rows:
<tr><td colspan="6">no events</td></tr>
% end
</table></div>
