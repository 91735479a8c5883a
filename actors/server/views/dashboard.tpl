% rebase('layout.tpl', title=title, refresh=None)
<h1>Dashboard <small>{{day.isoformat()}}</small></h1>
<section class="grid">
<div class="card">
<h2>Members by status</h2>
% if status_counts is None:
<p class="needs">{{why['members']}}</p>
% else:
<p class="big">{{member_total}} <small>members</small></p>
<table class="counts">
% for status, n in status_counts.items():
<tr><td><span class="status s-{{status}}">{{status}}</span></td><td class="num">{{n}}</td></tr>
% end
</table>
% end
</div>
<div class="card chart" id="chart-activity">
% if 'activity' in charts:
{{!charts['activity']}}
% else:
<h2>Active members</h2><p class="needs">{{why['activity']}}</p>
% end
</div>
</section>
<section class="grid">
<div class="card chart" id="chart-income">
% if 'income' in charts:
{{!charts['income']}}
% else:
<h2>Income by month</h2><p class="needs">{{why['income']}}</p>
% end
</div>
<div class="card chart" id="chart-sales">
% if 'sales' in charts:
{{!charts['sales']}}
<details><summary>sales as a table</summary>
<div class="scroll"><table>
<tr><th>machine</th><th>product</th><th class="num">CAD</th><th class="num">sats</th></tr>
% for r in sales:
<tr><td>{{r['machine']}}</td><td>{{r['product']}}</td><td class="num">{{cad(r['cents'])}}</td><td class="num">{{f"{r['sats']:,}"}}</td></tr>
% end
</table></div></details>
% else:
<h2>Sales per machine and product</h2><p class="needs">{{why['income']}}</p>
% end
</div>
</section>
<section class="grid">
<div class="card" id="payouts">
<h2>Payouts awaiting signatures</h2>
% if 'finance' not in token.scopes:
%   include('needs.tpl', scope='finance')
% elif payouts is None:
<p class="needs">{{payouts_why}}</p>
% else:
%   waiting = [p for p in payouts['payouts'] if p['state'] == 'awaiting_signatures']
<p>{{payouts['pending'].get('awaiting_signatures', 0)}} awaiting signatures, {{payouts['pending'].get('requested', 0)}} awaiting approval. <a href="/payouts">all payouts</a></p>
%   if waiting:
<div class="scroll"><table>
<tr><th>#</th><th class="num">sats</th><th>reason</th><th class="num">signatures</th></tr>
%     for p in waiting:
<tr><td>{{p['id']}}</td><td class="num">{{f"{p['sats']:,}"}}</td><td>{{p['reason']}}</td><td class="num">{{p['signatures']}}</td></tr>
%     end
</table></div>
%   end
% end
</div>
<div class="card" id="invoices">
<h2>Latest invoices</h2>
% if 'finance' not in token.scopes:
%   include('needs.tpl', scope='finance')
% elif invoices is None:
<p class="needs">{{invoices_why}}</p>
% else:
<div class="scroll"><table>
<tr><th>#</th><th>state</th><th>machine</th><th>product</th><th class="num">CAD</th></tr>
%   for i in invoices:
<tr><td>{{i['invoice']}}</td><td><span class="status s-{{i['state']}}">{{i['state']}}</span></td><td>{{i['machine']}}/{{i['slot']}}</td><td>{{i['product']}}</td><td class="num">{{cad(i['price_cents'] * i['items'])}}</td></tr>
%   end
</table></div>
<p><a href="/invoices">all invoices</a></p>
% end
</div>
</section>
<section class="grid">
<div class="card" id="health">
<h2>Health</h2>
% if 'events' not in token.scopes:
%   include('needs.tpl', scope='events')
% else:
<ul class="pills">
%   for r in health:
<li><span class="status s-{{r['judged']}}">{{r['judged']}}</span> {{r['name']}}</li>
%   end
</ul>
<p><a href="/health">details</a></p>
% end
</div>
<div class="card" id="events">
<h2>Latest events</h2>
% if 'events' not in token.scopes:
%   include('needs.tpl', scope='events')
% else:
<div class="scroll"><table>
<tr><th>logged (UTC)</th><th>topic</th><th>sender</th></tr>
%   for e in events:
<tr><td>{{when(e['logged'], ms=True)}}</td><td>{{e['topic']}}</td><td>{{e['sender'] or '-'}}</td></tr>
%   end
</table></div>
<p><a href="/events">the live tail</a></p>
% end
</div>
<div class="card" id="members-link">
<h2>Members</h2>
% if 'members' not in token.scopes:
%   include('needs.tpl', scope='members')
% else:
<p>Status, paid-through and balance of every member: <a href="/members">members</a>.</p>
% end
</div>
</section>
