% rebase('layout.tpl', title=title, refresh=refresh)
<h1>Health <small>from the heartbeats in the event log; refreshes every {{refresh}} s</small></h1>
<div class="scroll"><table>
<tr><th>name</th><th>role</th><th>status</th><th>last seen</th><th>version</th><th class="num">pid</th><th class="num">uptime</th><th>detail</th></tr>
% for r in rows:
<tr><td>{{r['name']}}</td><td>{{r['role']}}</td><td><span class="status s-{{r['judged']}}">{{r['judged']}}</span></td><td>{{ago(r['age'])}}</td><td>{{r['version'] or '-'}}</td><td class="num">{{r['pid'] or '-'}}</td><td class="num">{{'-' if r['uptime'] is None else f"{r['uptime']} s"}}</td><td>{{r['detail'] or ''}}</td></tr>
% end
</table></div>
<p class="note">ok: a heartbeat within two intervals and 1.5 s; stale: older; down: none in the log's newest segments.</p>
