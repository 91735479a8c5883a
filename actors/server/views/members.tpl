% rebase('layout.tpl', title=title, refresh=None)
<h1>Members <small>on {{day.isoformat()}}</small></h1>
<p class="filters"><a href="/members"{{!' class="here"' if status is None else ''}}>all ({{total}})</a>
% for s, n in status_counts.items():
<a href="/members?status={{s}}"{{!' class="here"' if status == s else ''}}>{{s}} ({{n}})</a>
% end
</p>
<div class="scroll"><table>
<tr><th>handle</th><th>status</th><th>paid through</th><th class="num">balance CAD</th><th>next charge</th><th class="num">CAD</th></tr>
% for r in rows:
<tr><td>{{r['handle']}}</td><td><span class="status s-{{r['status']}}">{{r['status']}}</span></td><td>{{r.get('paid_through') or '-'}}</td><td class="num">{{cad(r.get('balance_cents'))}}</td><td>{{r.get('next_charge') or '-'}}</td><td class="num">{{cad(r.get('next_charge_cents'))}}</td></tr>
% end
% if not rows:
<tr><td colspan="6">no members</td></tr>
% end
</table></div>
