% rebase('layout.tpl', title=title, refresh=None)
<h1>Payouts</h1>
<p>{{total}} payouts; not finished: {{', '.join(f'{n} {s}' for s, n in sorted(pending.items())) or 'none'}}.
Approvals needed: {{approvals}}{{'; signatures needed: ' + signatures if signatures else ''}}.</p>
<div class="scroll"><table>
<tr><th>#</th><th>kind</th><th>state</th><th class="num">sats</th><th class="num">CAD</th><th>destination</th><th>reason</th><th class="num">approvals</th><th class="num">signatures</th><th>requested (UTC)</th><th>by</th></tr>
% for p in rows:
<tr class="{{'waiting' if p['state'] == 'awaiting_signatures' else ''}}"><td>{{p['id']}}</td><td>{{p['kind']}}</td><td><span class="status s-{{p['state']}}">{{p['state']}}</span></td><td class="num">{{f"{p['sats']:,}"}}</td><td class="num">{{p['cad'] or '-'}}</td><td class="addr">{{p['destination']}}</td><td>{{p['reason']}}</td><td class="num">{{p['approvals']}}{{f" ({p['rejections']} rejected)" if p['rejections'] else ''}}</td><td class="num">{{p['signatures']}}</td><td>{{when(p['requested_at'])}}</td><td>{{p['requested_by']}}</td></tr>
% end
% if not rows:
<tr><td colspan="11">no payouts</td></tr>
% end
</table></div>
<p class="pager">
% if number > 1:
<a href="/payouts?page={{number - 1}}">newer</a>
% end
% if more:
<a href="/payouts?page={{number + 1}}">older</a>
% end
</p>
